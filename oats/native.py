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

__all__ = ["available", "status", "row_topk", "ISAS", "best_isa", "bitmask_matmul", "bitmask_lowrank_decode",
           "bitmask_prefill", "bitmask_to_dense", "dense_matmul"]

# The bitmask kernels' instruction-set paths
ISAS = {"scalar": 1, "avx2": 2, "avx512": 3, "avx512vbmi2": 4, "avx512bf16": 5}
# (avx512vbmi2: AVX-512 with vpexpandw, which one-token products with bf16 values use; avx512bf16: that and
# AVX512_BF16, whose vdpbf16ps the prefill of bf16 layers uses; each the same as the one below it otherwise)
_ISA_NAMES = {code: name for name, code in ISAS.items()}


_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
# The C entry points of oats/_native: name -> (return type, argument types).
_SIGNATURES = {
    "oats_row_topk": (_I64, [_P, _I64, _I64, _I64, _P, _INT, _P, _P, _INT]),
    "oats_best_isa": (_INT, []),
    "oats_bitmask_matmul": (_INT, [_P, _INT, _P, _P, _I64, _I64, _I64, _P, _I64, _P, _INT, _INT, _INT]),
    "oats_bitmask_lowrank_decode": (_INT, [_P, _INT, _P, _P, _I64, _I64, _I64, _P, _P, _INT, _P, _P, _INT, _I64, _P,
                                           _INT, _INT]),
    "oats_bitmask_prefill": (_INT, [_P, _INT, _P, _P, _I64, _I64, _I64, _P, _I64, _P, _INT, _P, _P, _INT, _I64, _INT,
                                    _INT]),
    "oats_dense_matmul": (_INT, [_P, _INT, _I64, _I64, _P, _I64, _P, _INT, _INT, _INT]),
    "oats_bitmask_to_dense": (_INT, [_P, _INT, _P, _P, _I64, _I64, _I64, _I64, _P, _INT, _INT, _INT]),
}


def declare(lib: ctypes.CDLL, names) -> ctypes.CDLL:
    """Sets the ctypes signatures of the named entry points of a build of the kernels (this one, or another
    commit's, for :mod:`reproduce.bench_kernels`)."""
    for name in names:
        f = getattr(lib, name)
        f.restype, f.argtypes = _SIGNATURES[name]
    return lib


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
    declare(lib, _SIGNATURES)
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
    lib = _lib()
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


def _lib() -> ctypes.CDLL:
    lib = _load()[0]
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {status()}")
    return lib


def best_isa() -> str:
    """The bitmask kernels' best instruction-set path on this CPU: ``avx512bf16``, ``avx512vbmi2``, ``avx512``,
    ``avx2`` or ``scalar``."""
    code = _lib().oats_best_isa()
    return _ISA_NAMES[code]


def isa_in_use() -> str:
    """The path the kernels take when no ``isa`` is passed: ``OATS_ISA`` where set (never above what this CPU
    has, as the kernels clamp it), else :func:`best_isa`."""
    best = best_isa()
    forced = os.environ.get("OATS_ISA") or None
    if forced is None:
        return best
    return forced if _isa_code(forced) <= ISAS[best] else best


def _check_values(values: torch.Tensor) -> int:
    """1 for bf16 values, 0 for fp32; anything else is refused (the kernels read raw memory)."""
    if values.dtype not in (torch.float32, torch.bfloat16) or values.device.type != "cpu":
        raise ValueError(f"bitmask kernels take fp32 or bf16 CPU values, got {values.dtype} on {values.device}")
    return int(values.dtype == torch.bfloat16)


def _isa_code(isa: str | None) -> int:
    isa = isa or os.environ.get("OATS_ISA") or None
    if isa is None:
        return 0
    if isa not in ISAS:
        raise ValueError(f"isa {isa!r} unknown; allowed: {', '.join(ISAS)} (or unset: the best this CPU has)")
    return ISAS[isa]


def bitmask_matmul(values: torch.Tensor, bitmask: torch.Tensor, row_offsets: torch.Tensor, d_in: int,
                   x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False,
                   isa: str | None = None) -> tuple[torch.Tensor, str]:
    """``x S^T`` for S in the bitmask format (:class:`oats.sparse_format.BitmaskTensor`'s arrays): (y, isa used).

    x: (n, d_in) fp32 contiguous. values fp32 or bf16. ``out``: (n, d_out) fp32 to write into, or to add to
    with ``accumulate``. ``isa``: one of :data:`ISAS` (capped at what the CPU has; default the best, or the
    environment's ``OATS_ISA``). Unchecked layout: callers pass a BitmaskTensor's own arrays.
    """
    lib = _lib()
    n = x.shape[0]
    d_out = bitmask.shape[0]
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out tensor to add to")
        out = torch.empty(n, d_out, dtype=torch.float32)
    used = lib.oats_bitmask_matmul(values.data_ptr(), _check_values(values), bitmask.data_ptr(),
                                   row_offsets.data_ptr(), values.numel(), d_out, d_in, x.data_ptr(), n,
                                   out.data_ptr(), int(accumulate), _isa_code(isa), torch.get_num_threads())
    return out, _ISA_NAMES[used]


def bitmask_lowrank_decode(values: torch.Tensor, bitmask: torch.Tensor, row_offsets: torch.Tensor, d_in: int,
                           x: torch.Tensor, V: torch.Tensor, U: torch.Tensor, out: torch.Tensor | None = None,
                           accumulate: bool = False, isa: str | None = None) -> tuple[torch.Tensor, str]:
    """``S x + U (V x)`` for one token x (d_in,) fp32 contiguous, in one pass of the kernels' threads: (y, isa).

    V: (r, d_in), U: (d_out, r), contiguous, both fp32 or both bf16. ``out``: (d_out,) fp32 to write into
    (or add to, with ``accumulate``).
    """
    lib = _lib()
    d_out = bitmask.shape[0]
    r = V.shape[0]
    _check_factors(V, U, d_in, d_out, "bitmask_lowrank_decode")
    if x.numel() != d_in or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"bitmask_lowrank_decode: x must be {d_in} contiguous fp32 values, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out tensor to add to")
        out = torch.empty(d_out, dtype=torch.float32)
    z = torch.empty(max(1, r), dtype=torch.float32)
    used = lib.oats_bitmask_lowrank_decode(values.data_ptr(), _check_values(values), bitmask.data_ptr(),
                                           row_offsets.data_ptr(), values.numel(), d_out, d_in, x.data_ptr(),
                                           out.data_ptr(), int(accumulate), V.data_ptr(), U.data_ptr(),
                                           int(V.dtype == torch.bfloat16), r, z.data_ptr(), _isa_code(isa),
                                           torch.get_num_threads())
    return out, _ISA_NAMES[used]


def bitmask_prefill(values: torch.Tensor, bitmask: torch.Tensor, row_offsets: torch.Tensor, d_in: int,
                    x: torch.Tensor, V: torch.Tensor | None = None, U: torch.Tensor | None = None,
                    out: torch.Tensor | None = None, accumulate: bool = False,
                    isa: str | None = None) -> torch.Tensor | None:
    """``x S^T + (x V^T) U^T`` for n tokens x (n, d_in) fp32 contiguous, in one native call: (n, d_out) fp32.

    The prefill product (AVX-512 or AVX2: None, nothing computed, elsewhere or where ``isa`` / ``OATS_ISA``
    asks for less): S walked by its set bits against L1-sized panels of the transposed tokens (work
    proportional to the nonzeros), the factors (both fp32 or both bf16, or None) as dense rows. On the
    ``avx512bf16`` path a layer with bf16 values (and bf16 or no factors) takes two nonzeros per ``vdpbf16ps``
    with x rounded to bf16 and Z = x V^T rounded to bf16 before U, as a bf16 GEMM computes; elsewhere x stays
    fp32. ``out`` / ``accumulate`` / ``isa`` as in :func:`bitmask_matmul`.
    """
    lib = _lib()
    code = _isa_code(isa)
    d_out = bitmask.shape[0]
    r = 0 if V is None else V.shape[0]
    if r:
        _check_factors(V, U, d_in, d_out, "bitmask_prefill")
    n, out = _tokens_and_output(x, d_in, d_out, out, accumulate, "bitmask_prefill")
    used = lib.oats_bitmask_prefill(values.data_ptr(), _check_values(values), bitmask.data_ptr(), row_offsets.data_ptr(),
                                    values.numel(), d_out, d_in, x.data_ptr(), n, out.data_ptr(), int(accumulate),
                                    V.data_ptr() if r else None, U.data_ptr() if r else None,
                                    int(r > 0 and V.dtype == torch.bfloat16), r, code, torch.get_num_threads())
    return out if used else None


def _tokens_and_output(x: torch.Tensor, d_in: int, d_out: int, out: torch.Tensor | None, accumulate: bool,
                       who: str) -> tuple[int, torch.Tensor]:
    """(n, the (n, d_out) fp32 output): x checked as (n, d_in) contiguous fp32; ``out`` or a new tensor."""
    if x.dim() != 2 or x.shape[1] != d_in or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"{who}: x must be contiguous fp32 (n, {d_in}), got {x.dtype} {tuple(x.shape)}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out tensor to add to")
        out = torch.empty(x.shape[0], d_out, dtype=torch.float32)
    return x.shape[0], out


def _check_factors(V: torch.Tensor, U: torch.Tensor, d_in: int, d_out: int, who: str) -> None:
    r = V.shape[0]
    if V.dtype != U.dtype or V.dtype not in (torch.float32, torch.bfloat16) or tuple(V.shape) != (r, d_in) \
            or tuple(U.shape) != (d_out, r) or not (V.is_contiguous() and U.is_contiguous()):
        raise ValueError(f"{who}: V must be ({r}, {d_in}) and U ({d_out}, {r}), contiguous, both fp32 "
                         f"or both bf16; got V {V.dtype} {tuple(V.shape)}, U {U.dtype} {tuple(U.shape)}")


def bitmask_to_dense(values: torch.Tensor, bitmask: torch.Tensor, row_offsets: torch.Tensor, d_in: int,
                     rows: tuple[int, int] | None = None, out: torch.Tensor | None = None,
                     isa: str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows ``[r0, r1)`` (default all) of a bitmask-format matrix as dense ``dtype`` (fp32; bf16 only from bf16
    values: the 16-bit words copied), into ``out`` (contiguous (r1 - r0, d_in), its dtype wins) if given."""
    lib = _lib()
    r0, r1 = rows or (0, bitmask.shape[0])
    if out is None:
        out = torch.empty(r1 - r0, d_in, dtype=dtype)
    bf16 = _check_values(values)
    if out.dtype not in (torch.float32, torch.bfloat16) or (out.dtype == torch.bfloat16 and not bf16) \
            or tuple(out.shape) != (r1 - r0, d_in) or not out.is_contiguous():
        raise ValueError(f"bitmask_to_dense: out must be contiguous ({r1 - r0}, {d_in}) fp32, or bf16 for bf16 values; "
                         f"got {out.dtype} {tuple(out.shape)} for {values.dtype} values")
    lib.oats_bitmask_to_dense(values.data_ptr(), bf16, bitmask.data_ptr(), row_offsets.data_ptr(), values.numel(), r0,
                              r1, d_in, out.data_ptr(), int(out.dtype == torch.bfloat16), _isa_code(isa),
                              torch.get_num_threads())
    return out


def dense_matmul(W: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False,
                 isa: str | None = None) -> tuple[torch.Tensor, str]:
    """``x W^T`` for a dense W (d_out, d_in), fp32 or bf16, contiguous; x (n, d_in) fp32 contiguous: (y, isa used).

    One token on AVX-512 streams W with software prefetch (the dense engine the sparse ones are measured
    against); more tokens take one dot product per row and token (use a BLAS GEMM for those). fp32
    accumulation, x stays fp32. ``out`` / ``accumulate`` / ``isa`` as in :func:`bitmask_matmul`.
    """
    lib = _lib()
    if W.dim() != 2 or not W.is_contiguous():
        raise ValueError(f"dense_matmul takes a contiguous 2-D weight, got {tuple(W.shape)}")
    d_out, d_in = W.shape
    n, out = _tokens_and_output(x, d_in, d_out, out, accumulate, "dense_matmul")
    used = lib.oats_dense_matmul(W.data_ptr(), _check_values(W), d_out, d_in, x.data_ptr(), n, out.data_ptr(),
                                 int(accumulate), _isa_code(isa), torch.get_num_threads())
    return out, _ISA_NAMES[used]
