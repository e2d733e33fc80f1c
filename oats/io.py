"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

:func:`atomic_file` and :func:`atomic_folder` yield a temporary path next to the
target, move it into place with :func:`os.replace` when the block succeeds and
remove it when the block fails; the ``atomic_write_*`` / ``atomic_save_*``
helpers write one file through :func:`atomic_file`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["atomic_file", "atomic_folder", "atomic_write_json", "atomic_write_text", "atomic_save_tensors"]


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file next to ``path``; on success it is synced to disk and moved onto ``path``.

    The temporary file exists (empty, owner-only) when the block starts; write it
    by name. If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(target: str | Path, complete: Callable[[Path], bool] = Path.is_dir) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it is moved into place as ``target``.

    The temporary folder is created owner-only (as :func:`tempfile.mkdtemp` does);
    change modes inside the block where others must read it. If the block raises,
    the temporary folder is removed and ``target`` is untouched. If the move fails
    because a concurrent writer already put ``target`` in place and ``complete(target)``
    holds, that writer won the race: its folder is kept and this one is dropped.

    Args:
        target: the folder to create.
        complete: tells whether an existing ``target`` is a finished one (default:
            any existing folder).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not complete(target):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
