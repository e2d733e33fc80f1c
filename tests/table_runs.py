"""Shared by the table tests: a table config as reproduce/run.py composes it, how many of its cells its
expected file checks, and a run of it through reproduce/run.py into a temporary results folder."""
import subprocess
import sys
from pathlib import Path

from reproduce.expected import load_expected
from reproduce.tables import CONF_DIR, TableSpec, expand

REPO = Path(__file__).resolve().parents[1]


def table_spec(name: str) -> TableSpec:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="reproduce", overrides=[f"table={name}"])
    return TableSpec.from_config(OmegaConf.to_container(cfg.table, resolve=True))


def checked_cells(name: str) -> tuple[int, int]:
    """(cells the expected file checks: a value, not unstable; all cells) of table NAME, a cell being
    (row, col, metric) of its expanded runs."""
    spec = table_spec(name)
    expected = load_expected(spec.expected)
    cells = {(run.row, run.col, metric) for run in expand(spec) for metric in spec.metrics}
    return sum(key in expected.cells and not expected.judge(key)[1] for key in cells), len(cells)


def run_table(name: str, results_dir: Path, *extra: str, timeout: int = 3600,
              hydra_dir: str = "hydra") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "reproduce" / "run.py"), f"table={name}", f"results_dir={results_dir}",
         f"hydra.run.dir={results_dir / hydra_dir}", *extra],
        capture_output=True, text=True, timeout=timeout)
