"""The package's compiled CPU kernels (``oats/_native/*.cpp``), built by the normal install.

``pip install -e .`` (``make setup``) compiles them into ``oats/_kernels*.so`` with the machine's
C++ compiler; they are loaded here through ctypes (a plain C ABI: no Python or torch headers).
Without a compiler the install still succeeds and every caller falls back to PyTorch: the
results are the same, only slower (:func:`status` says which and why). ``OATS_NATIVE=0`` turns
the kernels off.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache

import torch

__all__ = ["available", "status", "row_topk"]


@lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("OATS_NATIVE", "1") == "0":
        return None, "off (OATS_NATIVE=0)"
    spec = importlib.util.find_spec("oats._kernels")
    if spec is None or not spec.origin:
        return None, ("not built (no C++ compiler with OpenMP at install time?); reinstall with "
                      "`pip install -e .` where g++ is present. PyTorch fallback in use")
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as e:
        return None, f"{spec.origin} does not load ({e}); PyTorch fallback in use"
    f = lib.oats_row_topk
    f.restype = ctypes.c_int64
    f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib, f"built ({os.path.basename(spec.origin)})"


def available() -> bool:
    return _load()[0] is not None


def status() -> str:
    return _load()[1]


def row_topk(R: torch.Tensor, k: int, cut: torch.Tensor | None = None,
             out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``k`` largest-magnitude entries of every row of ``R``: (S, mask, cut).

    R: (m, n) fp32 on the CPU, 0 < k < n. S = R on the kept entries and 0 elsewhere, mask the
    kept entries (bool), cut (m,) each row's k-th largest magnitude. Pass the previous call's
    ``cut`` to warm-start (the search starts near it; the result is exact either way). Ties at
    the cut keep the lowest column indices. ``out``: (S, mask) buffers to write into (contiguous,
    fp32 and bool, R's shape). Requires :func:`available`.
    """
    lib = _load()[0]
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {status()}")
    if R.dtype != torch.float32 or R.device.type != "cpu" or R.dim() != 2:
        raise ValueError(f"row_topk takes a 2-D fp32 CPU tensor, got {R.dtype} {tuple(R.shape)} on {R.device}")
    m, n = R.shape
    if not 0 < k < n:
        raise ValueError(f"row_topk: k={k} outside (0, n={n})")
    R = R.contiguous()
    warm = cut is not None
    cut = cut.clone() if warm else torch.empty(m, dtype=torch.float32)
    if out is None:
        S, mask = torch.empty_like(R), torch.empty(m, n, dtype=torch.bool)
    else:
        S, mask = out
        if S.shape != R.shape or mask.shape != R.shape or S.dtype != torch.float32 or mask.dtype != torch.bool \
                or not (S.is_contiguous() and mask.is_contiguous()):
            raise ValueError(f"row_topk: out buffers must be contiguous fp32 and bool of shape {tuple(R.shape)}")
    lib.oats_row_topk(R.data_ptr(), m, n, k, cut.data_ptr(), int(warm), S.data_ptr(), mask.data_ptr(),
                      torch.get_num_threads())
    return S, mask, cut
