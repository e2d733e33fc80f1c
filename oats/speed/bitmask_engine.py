"""The project's own CPU engine: ``y = x S^T + (x V^T) U^T (+ b)`` with S in the bitmask format.

The sparse part runs on the native kernels (:func:`oats.native.bitmask_matmul`, AVX-512 or AVX2
chosen at run time, OpenMP over output rows), the low-rank part through PyTorch's BLAS. Values and
factors are fp32 or bf16 (fp32 accumulation either way).

Per phase the module picks the fastest way to compute the layer, once per token-count bucket (powers of
two), by timing them on the layer itself (``CHOOSE_ROUNDS`` interleaved rounds, each path judged by its
fastest call): **spmm** (AVX-512 or AVX2: :func:`oats.native.bitmask_prefill`, S walked by its set bits
against L1-sized panels of the transposed tokens, each nonzero broadcast into FMAs over up to 128 tokens,
or with bf16 values and AVX512_BF16 two nonzeros per ``vdpbf16ps``, and the factors as dense rows, all in
one native call: work proportional to the kept parameters, the compute-bound prefill), the **kernel**
(reads each weight's bit and value once per group of 8 tokens; factors through PyTorch) and **tile +
GEMM** (expands a tile of rows to dense, fp32 or bf16 as the values, then a PyTorch GEMM over all tokens;
factors through PyTorch), timed at each of ``TILE_SIZES``. No dense copy of the weights is kept: a tile
is at most the largest of ``TILE_SIZES``, in one scratch buffer that every layer shares (layers run one
after another). :attr:`BitmaskLinear.choices` says what it picked (:meth:`BitmaskLinear.way`: with the
tile size). One token
(decode) goes through the sparse and the low-rank parts in one native call
(:func:`oats.native.bitmask_lowrank_decode`: z = V x, then each row's sparse sum plus U_i . z, on the
kernels' own OpenMP threads). Handing the factors to numpy's OpenBLAS instead made OATS decode 3x slower:
its threads spin after each call (``OPENBLAS_THREAD_TIMEOUT``, :mod:`oats.speed.env`).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .. import native
from ..sparse_format import BitmaskTensor

# One expanded tile of rows: the best size depends on the machine, so the layer times each of TILE_SIZES.
# One 14336 x 4096 layer, bf16, 128 tokens, 2 threads, against PyTorch's dense bf16 GEMM of the whole
# layer: on an AMD EPYC (Zen 5) 2 MiB tiles 0.98x, 4 MiB 1.05-1.10x, 8 MiB 1.00-1.03x at 30-60% density
# (the expansion streams its sources with software prefetch: 4.5 -> 2.2 ms per layer); on an Intel Xeon
# with AMX (oneDNN's bf16 GEMM on AMX, whose cost per call is amortised over larger tiles), at 50%:
# 2 MiB 0.45x, 4 MiB 0.57x, 8 MiB 0.65x, 16 MiB 0.80x, 32 MiB 0.84x (and 4096 x 14336: 0.27x at 4 MiB,
# 0.59x at 16 MiB; reproduce/bench_tiles.py, results/speed/intel_xeon_amx/tile_sizes.txt). TILE_BYTES is
# the size a forced ``path="tile-gemm"`` uses.
TILE_SIZES = (4 << 20, 16 << 20)
TILE_BYTES = TILE_SIZES[0]
PATHS = ("kernel", "spmm", "tile-gemm")
# Timed rounds per choice, the paths interleaved within each and each judged by its fastest call: on a
# shared machine one call per path (as before) picked differently between layers of the same shape.
CHOOSE_ROUNDS = 3


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_SCRATCH: dict[torch.dtype, torch.Tensor] = {}  # the expanded tiles of every layer, one buffer per dtype


def _scratch(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """A (rows, cols) tile in the shared scratch buffer (grown when a layer needs more)."""
    buf = _SCRATCH.get(dtype)
    if buf is None or buf.numel() < rows * cols:
        buf = _SCRATCH[dtype] = torch.empty(rows * cols, dtype=dtype)
    return buf[: rows * cols].view(rows, cols)


class _NativeModule(nn.Module):
    """A linear whose ``matmul`` (n, d_in) -> (n, d_out) fp32 is native; bias and shapes around it."""

    out_features: int
    bias: torch.Tensor | None

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out) in x's dtype."""
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]))
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class BitmaskLinear(_NativeModule):
    """One linear layer on the bitmask engine (see the module doc).

    S: the sparse part (its values' dtype sets the factors' dtype). U: (d_out, r), V: (r, d_in) or
    None. bias: (d_out,) or None. ``path``: force ``kernel``, ``spmm`` or ``tile-gemm``; None picks per
    bucket. Values must be fp32 or bf16 (the kernels' types).
    """

    def __init__(self, S: BitmaskTensor, U: torch.Tensor | None = None, V: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, path: str | None = None) -> None:
        super().__init__()
        if path is not None and path not in PATHS:
            raise ValueError(f"path {path!r} unknown; allowed: {', '.join(PATHS)} (or None: the faster per bucket)")
        if S.values.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"BitmaskLinear takes fp32 or bf16 values, got {S.values.dtype}")
        self.S = S
        self.out_features, self.in_features = S.shape
        dt = S.values.dtype
        self.V = None if U is None or U.shape[1] == 0 else V.detach().to(dt).contiguous()  # (r, d_in)
        self.U = None if self.V is None else U.detach().to(dt).contiguous()  # (d_out, r)
        self.bias = None if bias is None else bias.detach().float()
        self.path = path
        self.choices: dict[int, str] = {}
        self.tile_bytes: dict[int, int] = {}  # bucket -> the tile size picked with tile-gemm

    @classmethod
    def from_dense_parts(cls, sparse: torch.Tensor, U: torch.Tensor | None = None, V: torch.Tensor | None = None,
                         bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                         path: str | None = None) -> BitmaskLinear:
        return cls(BitmaskTensor.from_dense(sparse, dtype), U, V, bias, path)

    @property
    def rank(self) -> int:
        return 0 if self.V is None else self.V.shape[0]

    def weight_bytes(self) -> int:
        """Bytes of weights read per forward: values, bitmask and row offsets, the factors."""
        lowrank = 0 if self.V is None else (self.V.numel() + self.U.numel()) * self.V.element_size()
        return self.S.nbytes + lowrank

    def _sparse_tiled(self, x: torch.Tensor, tile_bytes: int = TILE_BYTES) -> torch.Tensor:
        """x S^T by tiles of rows expanded to dense (fp32, or bf16 for bf16 values: then x is rounded to bf16
        as a bf16 GEMM does) and a PyTorch GEMM; at most ``tile_bytes`` of S dense at a time."""
        d_out, d_in = self.S.shape
        dt = self.S.values.dtype
        rows = min(d_out, max(16, tile_bytes // (dt.itemsize * d_in)))
        scratch = _scratch(rows, d_in, dt)
        yt = torch.empty(d_out, x.shape[0])
        xt = x.t().to(dt)
        for r0 in range(0, d_out, rows):
            r1 = min(d_out, r0 + rows)
            tile = scratch[: r1 - r0]
            native.bitmask_to_dense(self.S.values, self.S.bitmask, self.S.row_offsets, d_in, (r0, r1), tile)
            if dt == torch.float32:
                torch.mm(tile, xt, out=yt[r0:r1])
            else:
                yt[r0:r1] = torch.mm(tile, xt)
        return yt.t()

    def _apply(self, x: torch.Tensor, path: str, tile_bytes: int = TILE_BYTES) -> torch.Tensor:
        """The whole product x S^T + (x V^T) U^T, (n, d_out) fp32, by ``path`` (tile-gemm: tiles of
        ``tile_bytes``)."""
        if path == "spmm" and native.available():  # S and the factors in one native call (AVX-512 or AVX2)
            y = native.bitmask_prefill(self.S.values, self.S.bitmask, self.S.row_offsets, self.in_features, x,
                                       self.V, self.U)
            if y is not None:
                return y
            path = "tile-gemm"
        y = (self.S.matmul(x) if path == "kernel" or not native.available()
             else self._sparse_tiled(x, tile_bytes))
        if self.V is not None:
            low = (x.to(self.V.dtype) @ self.V.t()) @ self.U.t()
            y = y.add_(low) if y.is_contiguous() else y + low
        return y

    def _choose(self, x: torch.Tensor) -> tuple[str, int]:
        """(path, tile bytes) for x's token bucket: forced, or the fastest way timed on x."""
        if self.path is not None:
            return self.path, TILE_BYTES
        n = x.shape[0]
        if n == 1 or not native.available():
            return "kernel", TILE_BYTES
        b = _bucket(n)
        if b not in self.choices:
            simd = native.ISAS[native.isa_in_use()] >= native.ISAS["avx2"]  # the spmm kernel's paths
            ways = [("kernel", TILE_BYTES)] + ([("spmm", TILE_BYTES)] if simd else [])
            ways += [("tile-gemm", tb) for tb in TILE_SIZES]
            for way in ways:
                self._apply(x, *way)  # warm
            seconds = dict.fromkeys(ways, float("inf"))
            for _ in range(CHOOSE_ROUNDS):  # ways interleaved, each judged by its fastest call
                for way in ways:
                    t = time.perf_counter()
                    self._apply(x, *way)
                    seconds[way] = min(seconds[way], time.perf_counter() - t)
            self.choices[b], self.tile_bytes[b] = min(seconds, key=seconds.get)
        return self.choices[b], self.tile_bytes[b]

    def way(self, bucket: int) -> str:
        """What the layer picked for ``bucket`` tokens, in words (tile-gemm with its tile size)."""
        path = self.choices[bucket]
        return f"{path} ({self.tile_bytes[bucket] >> 20} MiB tiles)" if path == "tile-gemm" else path

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, d_out) fp32, bias excluded."""
        x = x.to(torch.float32).contiguous()
        if x.shape[0] == 1:
            if self.V is not None and native.available():
                y, _ = native.bitmask_lowrank_decode(self.S.values, self.S.bitmask, self.S.row_offsets,
                                                     self.in_features, x[0], self.V, self.U)
                return y.unsqueeze(0)
            return self._apply(x, "kernel")
        return self._apply(x, *self._choose(x))

    def extra_repr(self) -> str:
        picked = ", ".join(f"n<={b}: {self.way(b)}" for b in sorted(self.choices))
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, values={self.S.values.dtype}, "
                f"density={self.S.nnz / max(1, self.out_features * self.in_features):.3f}"
                + (f", picked [{picked}]" if picked else ""))


class NativeDenseLinear(_NativeModule):
    """A dense linear on the native kernels: the dense engine the sparse ones are measured against.

    One token streams W (fp32 or bf16, fp32 x and accumulation) through :func:`oats.native.dense_matmul`
    (AVX-512; elsewhere a dot product per row); more tokens are a PyTorch GEMM (bf16 weights: x in bf16,
    as the ``torch-bf16`` engine computes).
    """

    def __init__(self, W: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"NativeDenseLinear takes fp32 or bf16 weights, got {dtype}")
        self.W = W.detach().to(dtype).contiguous()
        self.out_features, self.in_features = self.W.shape
        self.bias = None if bias is None else bias.detach().float()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_in) -> (n, d_out) fp32, bias excluded."""
        x = x.to(torch.float32).contiguous()
        if x.shape[0] == 1 and native.available():
            return native.dense_matmul(self.W, x)[0]
        return torch.nn.functional.linear(x.to(self.W.dtype), self.W).float()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, weights={self.W.dtype}"
