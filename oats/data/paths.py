"""Where the offline data and the project's caches live.

Both locations are configured once, in this order of precedence:

* data root: explicit argument, else the environment variable ``OATS_DATA_ROOT``,
  else ``<repo>/../shared/data`` when that folder exists.
* cache dir: explicit argument, else ``OATS_CACHE_DIR``, else ``~/.cache/oats-repro``.

Everything that reads an offline file (calibration text, WikiText-2 test, PIQA,
MMLU) goes through :func:`data_file`, so a missing file always fails with the
same short message naming the path and how to configure it.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataNotAvailableError", "data_root", "cache_dir", "data_file"]

DATA_ROOT_ENV = "OATS_DATA_ROOT"
CACHE_DIR_ENV = "OATS_CACHE_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DEFAULT_DATA_ROOT = _REPO_ROOT.parent / "shared" / "data"
_DEFAULT_CACHE_DIR = Path("~/.cache/oats-repro")


class DataNotAvailableError(RuntimeError):
    """A data set is neither reachable on the hub nor present under the data root."""


def data_root(override: str | Path | None = None) -> Path:
    """Return the root folder of the offline data.

    Args:
        override: explicit folder; wins over ``OATS_DATA_ROOT`` and the default.

    Raises:
        DataNotAvailableError: nothing was configured and ``<repo>/../shared/data``
            does not exist.
    """
    if override is not None:
        return Path(override).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if _DEFAULT_DATA_ROOT.is_dir():
        return _DEFAULT_DATA_ROOT.resolve()
    raise DataNotAvailableError(
        f"no offline data root configured: set {DATA_ROOT_ENV}=/path/to/shared/data "
        f"(or pass data_root=...); the default {_DEFAULT_DATA_ROOT} does not exist"
    )


def cache_dir(override: str | Path | None = None) -> Path:
    """Return (and create) the project's cache folder (dequantised GGUF models, ...).

    Args:
        override: explicit folder; wins over ``OATS_CACHE_DIR`` and ``~/.cache/oats-repro``.
    """
    raw = override if override is not None else os.environ.get(CACHE_DIR_ENV) or _DEFAULT_CACHE_DIR
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_file(relative: str | Path, root: str | Path | None = None) -> Path:
    """Return ``<data root>/<relative>``, failing clearly when it is missing.

    Args:
        relative: path inside the data root, e.g. ``"piqa/valid.jsonl"``.
        root: data root override (see :func:`data_root`).

    Raises:
        DataNotAvailableError: the file or folder does not exist.
    """
    base = data_root(root)
    path = base / relative
    if not path.exists():
        raise DataNotAvailableError(
            f"offline data file {path} not found; point {DATA_ROOT_ENV} (or data_root=...) "
            f"at the folder that holds {relative}"
        )
    return path
