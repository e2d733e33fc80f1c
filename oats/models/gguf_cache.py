"""The dequantised GGUF cache: each GGUF file is dequantised once, then loaded as a plain model folder.

GGUF files are dequantised once by transformers (``gguf_file=``, 20-35 s for a
135M model) and the dense weights are cached as safetensors (plus the tokenizer)
under ``<cache dir>/gguf/``; later loads read the cache in about a second. The
cache key covers the file's size, mtime and its first and last MiB, so a changed
file gets a fresh cache entry; entries are written with :func:`oats.io.atomic_folder`
(a temporary folder moved into place with :func:`os.replace`), so a crash never
leaves a half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.paths import cache_dir as cache_root
from ..io import atomic_folder
from .base import DTYPE_KWARG

__all__ = ["CACHE_MARKER", "gguf_fingerprint", "gguf_cache_path", "dequantise_gguf", "cached_gguf_folder"]

log = logging.getLogger(__name__)

_MIB = 1 << 20
_CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
CACHE_MARKER = "oats_gguf_cache.json"  # written last: its presence marks a complete entry


def gguf_fingerprint(path: str | Path) -> str:
    """A short key that changes whenever the GGUF file (or the dequantising code) changes.

    Covers the cache format, the transformers version, the file's size and mtime,
    and a SHA-256 of its first and last MiB.
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(
        f"{_CACHE_FORMAT}|{transformers.__version__}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    )
    with path.open("rb") as fh:
        digest.update(fh.read(_MIB))
        if stat.st_size > _MIB:
            fh.seek(max(stat.st_size - _MIB, _MIB))
            digest.update(fh.read(_MIB))
    return digest.hexdigest()[:16]


def _entry_prefix(path: Path) -> str:
    """Cache entries of one file share ``<stem>-<hash of its absolute path>-``."""
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.stem}-{where}-"


def gguf_cache_path(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder where the dequantised copy of the GGUF file ``path`` is (or would be) cached."""
    path = Path(path)
    return cache_root(cache_dir) / "gguf" / f"{_entry_prefix(path)}{gguf_fingerprint(path)}"


def _is_complete_entry(folder: Path) -> bool:
    return (folder / CACHE_MARKER).is_file()


def _gguf_quantization_kwargs(path: Path) -> dict[str, Any]:
    """Ask transformers (>= 5) to unpack every weight into a plain dense model.

    Without it, newer transformers keep a GGUF quantizer attached to the model,
    which refuses ``save_pretrained``; older versions always dequantise.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=str(path), dequantize=True)}


def dequantise_gguf(path: Path, target: Path) -> None:
    """Dequantise ``path`` to float32 and write model + tokenizer atomically to ``target``.

    Older cache entries of the same file (other fingerprints) are removed afterwards.
    """
    start = time.perf_counter()
    log.info("dequantising %s once (cached at %s)", path, target)
    kwargs = {"gguf_file": path.name, DTYPE_KWARG: torch.float32}
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), **kwargs, **_gguf_quantization_kwargs(path)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers left the quantizer attached although weights are dense
        quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with atomic_folder(target, complete=_is_complete_entry) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "gguf_file": str(path.resolve()),
            "size": path.stat().st_size,
            "mtime_ns": path.stat().st_mtime_ns,
            "transformers": transformers.__version__,
            "dequantise_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        for item in tmp.iterdir():  # mkdtemp / safetensors create owner-only modes
            item.chmod(0o644)
        tmp.chmod(0o755)
    for stale in target.parent.glob(f"{_entry_prefix(path)}*"):
        if stale != target:  # an older version of the same file
            shutil.rmtree(stale, ignore_errors=True)
    log.info("dequantised %s in %.1f s", path.name, time.perf_counter() - start)


def cached_gguf_folder(path: Path, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of the GGUF file ``path``, dequantising it first on a cache miss."""
    target = gguf_cache_path(path, cache_dir)
    if not _is_complete_entry(target):
        dequantise_gguf(path, target)
    return target
