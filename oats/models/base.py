"""What every model source shares: the "not available" error, dtypes, and the hub-id guard.

:data:`DTYPE_KWARG` is the name of ``from_pretrained``'s dtype keyword in the installed
transformers; :func:`hub_or_cache` wraps a ``from_pretrained`` of a hub id (language
and vision models) in the hub policy of :mod:`oats.hub`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import transformers
from packaging.version import Version

from ..hub import local_files_only, not_available_message

__all__ = ["ModelNotAvailableError", "DTYPES", "DTYPE_KWARG", "resolve_dtype", "hub_or_cache"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# transformers renamed from_pretrained(torch_dtype=) to dtype= in 4.56
DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class ModelNotAvailableError(RuntimeError):
    """The requested model is not installed, not on disk and the hub cannot provide it."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype among them) to a torch dtype.

    Raises:
        ValueError: any other value; the message names the value and the allowed ones.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; allowed: {', '.join(DTYPES)}")


@contextlib.contextmanager
def hub_or_cache(what: str, remedy: str, checked: str = "") -> Iterator[bool]:
    """Around ``from_pretrained`` of a hub id: yields its ``local_files_only``, reports a miss clearly.

    Yields :func:`oats.hub.local_files_only` (only the local Hugging Face cache unless
    the hub answers, so an unreachable hub costs one quick look). transformers reports
    a hub / cache miss as ``OSError``; it becomes a :class:`ModelNotAvailableError` with
    the message of :func:`oats.hub.not_available_message` (``what``, ``remedy``, ``checked``
    as there), raised without the hub client's traceback.
    """
    try:
        yield local_files_only()
    except OSError as exc:
        raise ModelNotAvailableError(not_available_message(what, remedy, error=exc, checked=checked)) from None
