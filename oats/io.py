"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

:func:`atomic_file` and :func:`atomic_folder` yield a temporary path next to the
target, move it into place with :func:`os.replace` when the block succeeds and
remove it when the block fails; the ``atomic_write_*`` / ``atomic_save_*``
helpers write one file through :func:`atomic_file`.

:class:`TensorFile` reads a safetensors file with plain reads instead of a memory mapping, so
the bytes of a tensor being loaded are not counted twice in the process's resident memory (the
file's mapped pages and the copy made from them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, **({"F8_E4M3": torch.float8_e4m3fn} if hasattr(torch, "float8_e4m3fn") else {}),
    **({"F8_E5M2": torch.float8_e5m2} if hasattr(torch, "float8_e5m2") else {}),
}


class TensorFileError(OSError):
    """A safetensors file that is truncated, damaged, or holds a type torch cannot read."""


class TensorFile:
    """A safetensors file read with ``readinto`` (no memory mapping): :meth:`keys`, :meth:`metadata`,
    :meth:`get_tensor`, the subset of ``safetensors.safe_open`` the loaders use.

    ``safe_open`` maps the whole file: every page a tensor is copied from stays resident (and is
    counted in the process's RSS) until the file closes, beside the copy. Here each tensor is read
    straight into its own memory. The header is checked against the file's size when opened, so
    a truncated file fails then, naming the file and the first tensor that lies past its end.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = self.path.open("rb")
        try:
            size = os.fstat(self._fh.fileno()).st_size
            raw = self._fh.read(8)
            if len(raw) < 8:
                raise TensorFileError(f"{self.path}: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise TensorFileError(f"{self.path}: header of {n} bytes in a file of {size}: truncated or "
                                      "not a safetensors file")
            try:
                header = json.loads(self._fh.read(n))
            except ValueError as err:
                raise TensorFileError(f"{self.path}: unreadable safetensors header ({err})") from None
            self._meta = header.pop("__metadata__", None) or {}
            self._start = 8 + n
            for key, info in header.items():
                begin, end = info["data_offsets"]
                if self._start + end > size:
                    raise TensorFileError(f"{self.path}: tensor {key} ends at byte {self._start + end} of a "
                                          f"{size}-byte file: the file is truncated")
            self._header = header
        except BaseException:
            self._fh.close()
            raise

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def keys(self) -> list[str]:
        return list(self._header)

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    def get_tensor(self, key: str) -> torch.Tensor:
        """Tensor ``key`` in memory of its own (KeyError naming the file when absent)."""
        try:
            info = self._header[key]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {key}") from None
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise TensorFileError(f"{self.path}: tensor {key} has type {info['dtype']}, which torch cannot hold")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise TensorFileError(f"{self.path}: tensor {key} holds {end - begin} bytes, its shape {list(shape)} "
                                  f"of {info['dtype']} needs {nbytes}")
        buf = torch.empty(end - begin, dtype=torch.uint8)
        self._fh.seek(self._start + begin)
        if end > begin and self._fh.readinto(buf.numpy()) != end - begin:
            raise TensorFileError(f"{self.path}: tensor {key} is cut short: the file is truncated")
        return buf.view(dtype).reshape(shape)
