"""Run a table config through reproduce/run.py into a temporary results folder (shared by the table tests)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_table(name: str, results_dir: Path, *extra: str, timeout: int = 3600,
              hydra_dir: str = "hydra") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "reproduce" / "run.py"), f"table={name}", f"results_dir={results_dir}",
         f"hydra.run.dir={results_dir / hydra_dir}", *extra],
        capture_output=True, text=True, timeout=timeout)
