"""Fashion-MNIST: the Debian package's IDX files, and the small subset committed with the project.

* Full data set: ``apt-get install dataset-fashion-mnist`` puts the four gzipped IDX files
  under ``/usr/share/datasets/fashion-mnist`` (``FASHION_MNIST_DIR`` overrides the folder).
* Committed subset (``results/data/fashion_mnist_subset.npz``, about 1 MB): 512 training
  images for calibration and the first 2,000 test images, so that the Fashion-MNIST ViT's
  regression table runs on any machine, without the package.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..data.paths import DataNotAvailableError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "FASHION_MNIST_DIR"
SUBSET = REPO / "results" / "data" / "fashion_mnist_subset.npz"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SUBSET_SPLITS = ("calib", "test")


def fmnist_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array: uint8 images (n, 28, 28) or labels (n,)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels int64 (n,)) of the full ``train`` or ``test`` split."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split {split!r}; allowed: {', '.join(_FILES)}")
    folder = fmnist_dir()
    paths = [folder / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotAvailableError(
            f"Fashion-MNIST {split} files not found ({', '.join(missing)}): install the Debian package "
            f"(`apt-get install dataset-fashion-mnist`) or set {DIR_ENV} to the folder holding the IDX files; "
            f"the committed subset 'fashion-mnist-subset:{'calib' if split == 'train' else 'test'}' needs neither"
        )
    return read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)


def load_subset(split: str, path: str | Path = SUBSET) -> tuple[np.ndarray, np.ndarray]:
    """The committed subset: ``calib`` (512 training images) or ``test`` (the first 2,000 test images)."""
    if split not in SUBSET_SPLITS:
        raise ValueError(f"Fashion-MNIST subset split {split!r}; allowed: {', '.join(SUBSET_SPLITS)}")
    path = Path(path)
    if not path.is_file():
        raise DataNotAvailableError(f"the committed Fashion-MNIST subset {path} is missing (git checkout it)")
    with np.load(path) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


def make_subset(path: str | Path = SUBSET, n_calib: int = 512, n_test: int = 2000, seed: int = 0) -> Path:
    """Write the subset from the full data: ``n_calib`` seeded-random training images, the first ``n_test`` test ones."""
    train_x, train_y = load_fmnist("train")
    test_x, test_y = load_fmnist("test")
    idx = np.sort(np.random.default_rng(seed).choice(len(train_x), n_calib, replace=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, calib_images=train_x[idx], calib_labels=train_y[idx].astype(np.uint8),
                        calib_index=idx.astype(np.int32), test_images=test_x[:n_test],
                        test_labels=test_y[:n_test].astype(np.uint8))
    return path
