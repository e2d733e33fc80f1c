"""Vision regression: the fmnist_vit table (every method on the committed Fashion-MNIST ViT at
30/40/50/70%), fresh, checked against its reference. Runs offline anywhere (committed model and data
subset); about 2.5 minutes on one core."""
from pathlib import Path

import pandas as pd
import pytest
from table_runs import checked_cells, run_table

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_fmnist_vit_table_within_tolerance(tmp_path):
    proc = run_table("fmnist_vit", tmp_path, "progress=false", "wandb.mode=disabled", timeout=1800)
    print(proc.stdout[-5000:])
    print(proc.stderr[-3000:])
    table = pd.read_csv(tmp_path / "tables" / "fmnist_vit.csv")
    assert (table.status == "missing").sum() == 0, "every run must produce its metrics"
    checked, cells = checked_cells("fmnist_vit")
    assert checked == cells == len(table), "every cell must be checked against the reference"
    assert table.status.isin(["pass", "fail"]).sum() == checked
    assert proc.returncode == 0, table[table.status == "fail"].to_string()


def test_committed_subset_matches_the_debian_package():
    """The committed data subset is the package's data (skips where the package is not installed)."""
    import numpy as np

    from oats.data.paths import DataNotAvailableError
    from oats.vision.fmnist import SUBSET, load_fmnist

    try:
        train_x, train_y = load_fmnist("train")
        test_x, test_y = load_fmnist("test")
    except DataNotAvailableError as exc:
        pytest.skip(f"Fashion-MNIST package not installed: {exc}")
    with np.load(SUBSET) as z:
        idx = z["calib_index"]
        assert np.array_equal(z["calib_images"], train_x[idx]) and np.array_equal(z["calib_labels"], train_y[idx])
        n = len(z["test_images"])
        assert np.array_equal(z["test_images"], test_x[:n]) and np.array_equal(z["test_labels"], test_y[:n])
