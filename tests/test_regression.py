"""CI regression: the smollm2_ci table on the real SmolLM2-135M, fresh, checked against its reference.

Fails when a checked cell (WikiText-2 perplexity, PIQA acc_norm of every method) leaves its
tolerance, so a change that silently worsens a method is caught. About 15 minutes on 2 cores.
"""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_smollm2_ci_table_within_tolerance(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "reproduce" / "run.py"), "table=smollm2_ci", f"results_dir={tmp_path}",
         "progress=false", "wandb.mode=offline", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=3600)
    print(proc.stdout[-6000:])
    print(proc.stderr[-3000:])
    table = pd.read_csv(tmp_path / "tables" / "smollm2_ci.csv")
    assert (table.status == "missing").sum() == 0, "every run must produce its metrics"
    assert (table.status == "pass").sum() >= 20, "the reference values must be checked, not skipped"
    assert proc.returncode == 0, table[table.status == "fail"].to_string()
    # the second call finds every run stored and recomputes nothing
    again = subprocess.run(
        [sys.executable, str(REPO / "reproduce" / "run.py"), "table=smollm2_ci", f"results_dir={tmp_path}",
         "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'hydra2'}"],
        capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 to run" in again.stdout
