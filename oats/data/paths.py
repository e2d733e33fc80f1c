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

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["DataNotAvailableError", "data_root", "cache_dir", "data_file", "hub_offline", "hub_reachable"]

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


def hub_offline() -> bool:
    """True when the environment asks the Hugging Face libraries not to use the network."""
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(var, "").strip().lower() in truthy
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def _endpoint_answers(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub may be used: not offline and its endpoint answers.

    One TCP connection to ``HF_ENDPOINT`` (default ``https://huggingface.co``) is
    tried, once per process, so that an unreachable hub costs ``timeout`` seconds
    instead of the hub clients' retry loops (about 25 s per call).
    """
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return _endpoint_answers(url.hostname or "huggingface.co", port, timeout)
