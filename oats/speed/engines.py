"""In-process CPU engines: each exported linear becomes a module that computes on numpy arrays.

The sparse part runs on the project's own engine, ``native`` (the bitmask format and its AVX-512 /
AVX2 kernels, :mod:`oats.speed.bitmask_engine`; ``native-bf16`` with bf16 values), or as a CSR
matrix multiplied by MKL (PyPI ``sparse-dot-mkl`` + ``mkl``) or scipy; the low-rank factors are
dense products (PyTorch's BLAS for native, MKL gemm with MKL, numpy otherwise). Dense layers can run
on ``torch`` (``F.linear``; ``torch-bf16`` in bf16), ``numpy`` (OpenBLAS), ``mkl`` (MKL gemm) or
``native`` / ``native-bf16`` (the kernels' streaming gemv for one token, a PyTorch GEMM for more), so a
speedup is measured against the fastest dense engine of the same value type. :func:`to_engine`
swaps a model's linears for these modules.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import native
from ..layers import set_submodule
from .bitmask_engine import BitmaskLinear, NativeDenseLinear
from .env import mkl_error, mkl_module, sparse_engine
from .export import ExportedLinear, export_modules

DENSE_ENGINES = ("torch", "numpy", "mkl", "native", "torch-bf16", "native-bf16")  # dense layers
SPARSE_ENGINES = ("native", "native-bf16", "mkl", "scipy")   # sparse part (+ dense low-rank factors)
# the weight format each engine reads: (format, bytes per value), for the bandwidth-ideal speedups (a dense
# variant reads dense weights on every engine: see engine_format)
ENGINE_FORMAT = {"native": ("bitmask", 4), "native-bf16": ("bitmask", 2), "mkl": ("csr", 4), "scipy": ("csr", 4),
                 "torch": ("dense", 4), "numpy": ("dense", 4), "torch-bf16": ("dense", 2)}


def engine_format(engine: str, dense: bool) -> tuple[str, int]:
    """(format, bytes per value) that ``engine`` reads for a dense or a compressed variant."""
    fmt, value_bytes = ENGINE_FORMAT[engine]
    return ("dense", value_bytes) if dense else (fmt, value_bytes)


def engine_dtype(engine: str) -> str:
    """The value type an engine computes with: ``bf16`` or ``fp32``."""
    return "bf16" if engine.endswith("-bf16") else "fp32"


def engines_here(dense: bool, bf16: bool = False) -> list[str]:
    """The in-process engines a variant is timed on here. Dense: torch, numpy, mkl (if MKL loads), native
    (if built). Compressed: the native bitmask engine (if built) and the CSR engine (MKL, else scipy)
    beside it. ``bf16``: also ``torch-bf16`` / ``native-bf16``."""
    if not dense:
        out = (["native"] if native.available() else []) + ["mkl" if mkl_module() is not None else "scipy"]
        return out + (["native-bf16"] if bf16 and native.available() else [])
    out = [e for e in DENSE_ENGINES if (e != "mkl" or mkl_module() is not None)
           and (not e.startswith("native") or native.available())]
    return out if bf16 else [e for e in out if engine_dtype(e) == "fp32"]


class CPULinear(nn.Module):
    """Runs one :class:`ExportedLinear` on numpy arrays with the named engine (see module doc).

    ``engine``: for a dense layer ``torch``, ``numpy`` or ``mkl``; for a sparse layer ``mkl`` or
    ``scipy``. The sparse product is computed as ``S @ x^T`` with ``x^T`` C-contiguous (MKL's fast
    layout here); with MKL the low-rank product is an MKL gemm accumulated into the same output.
    ``matmul``: the engine's product without the bias, numpy (n, d_in) fp32 -> (n, d_out) (not for
    ``torch``, which runs in :meth:`forward`).
    """

    def __init__(self, spec: ExportedLinear, engine: str) -> None:
        super().__init__()
        self.spec, self.engine = spec, engine
        self.in_features, self.out_features = spec.d_in, spec.d_out
        allowed = DENSE_ENGINES if spec.kind == "dense" else SPARSE_ENGINES
        if engine not in allowed:
            raise ValueError(f"engine {engine!r} cannot run a {spec.kind} layer; allowed: {', '.join(allowed)}")
        if engine == "mkl" and mkl_module() is None:
            raise RuntimeError(f"engine 'mkl' unavailable: {mkl_error()}; install the extra `.[speed]`")
        if engine.startswith("native") and not native.available():
            raise RuntimeError(f"engine {engine!r} unavailable: native kernels {native.status()}")
        self._torch_w = torch.from_numpy(spec.weight) if spec.weight is not None else None
        if engine == "torch-bf16":
            self._torch_w = self._torch_w.to(torch.bfloat16)
        self._torch_b = None if spec.bias is None else torch.from_numpy(spec.bias)
        self._wt = np.ascontiguousarray(spec.weight.T) if spec.weight is not None and \
            engine in ("numpy", "mkl") else None
        self._bitmask = None
        self._dense_native = None
        if engine.startswith("native") and spec.kind == "dense":
            self._dense_native = NativeDenseLinear(torch.from_numpy(spec.weight),
                                                   dtype=torch.bfloat16 if engine == "native-bf16" else torch.float32)
        elif engine.startswith("native"):
            self._bitmask = BitmaskLinear.from_dense_parts(
                torch.from_numpy(spec.sparse.toarray()), None if spec.U is None else torch.from_numpy(spec.U),
                None if spec.V is None else torch.from_numpy(spec.V),
                dtype=torch.bfloat16 if engine == "native-bf16" else torch.float32)
        factors = spec.U is not None and self._bitmask is None  # the native engine holds its own copy
        self._ut = np.ascontiguousarray(spec.U.T) if factors else None   # (r, d_out)
        self._vt = np.ascontiguousarray(spec.V.T) if factors else None   # (d_in, r)
        self.matmul: Callable[[np.ndarray], np.ndarray] = self._choose()

    def _choose(self) -> Callable[[np.ndarray], np.ndarray]:
        spec, mkl = self.spec, mkl_module() if self.engine == "mkl" else None
        if self._bitmask is not None:
            return lambda x: self._bitmask.matmul(torch.from_numpy(x)).numpy()
        if self._dense_native is not None:
            return lambda x: self._dense_native.matmul(torch.from_numpy(x)).numpy()
        if self.engine == "torch-bf16":
            return lambda x: F.linear(torch.from_numpy(x).to(torch.bfloat16), self._torch_w).float().numpy()
        if spec.kind == "dense":
            if self.engine == "mkl":
                return lambda x: mkl.dot_product_mkl(x, self._wt)
            return lambda x: x @ self._wt
        S = spec.sparse
        if self.engine == "mkl":
            def run(x: np.ndarray) -> np.ndarray:
                yt = mkl.dot_product_mkl(S, np.ascontiguousarray(x.T))            # (d_out, n)
                y = yt.T
                if self._ut is not None:
                    y = y + mkl.dot_product_mkl(mkl.dot_product_mkl(x, self._vt), self._ut)
                return y
            return run

        def run_scipy(x: np.ndarray) -> np.ndarray:
            y = (S @ np.ascontiguousarray(x.T)).T
            if self._ut is not None:
                y = y + (x @ self._vt) @ self._ut
            return y
        return run_scipy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out), in ``x``'s dtype (computed in fp32)."""
        if self.engine == "torch":
            return F.linear(x, self._torch_w.to(x.dtype), None if self._torch_b is None else self._torch_b.to(x.dtype))
        native_module = self._bitmask if self._bitmask is not None else self._dense_native
        if native_module is not None:
            shape = x.shape
            y = native_module.matmul(x.reshape(-1, shape[-1]))
            if self._torch_b is not None:
                y = y + self._torch_b
            return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).detach().to(torch.float32).cpu().numpy()
        y = self.matmul(x2)
        if self.spec.bias is not None:
            y = y + self.spec.bias
        return torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).view(*shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes of weights this engine reads per forward (its format, :data:`ENGINE_FORMAT`)."""
        return self.spec.weight_bytes(*engine_format(self.engine, self.spec.kind == "dense"))

    def extra_repr(self) -> str:
        nm = f", nm={self.spec.nm}" if self.spec.nm else ""
        return f"in={self.in_features}, out={self.out_features}, kind={self.spec.kind}, rank={self.spec.rank}, " \
               f"engine={self.engine}{nm}"


class CPUSplitLinear(nn.Module):
    """A :class:`oats.layers.SplitLinear` (fused projection kept as row blocks) on CPU:
    (..., d_in) -> the parts' outputs concatenated, (..., sum of their d_out)."""

    def __init__(self, parts: list[CPULinear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def build_engine_modules(exported: dict, engine: str) -> dict[str, nn.Module]:
    """:func:`oats.speed.export.export_modules`' layers as CPU modules of ``engine``, by path."""
    return {name: CPUSplitLinear([CPULinear(p, engine) for p in spec]) if isinstance(spec, list)
            else CPULinear(spec, engine) for name, spec in exported.items()}


def swap_modules(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put ``modules`` in place (by path); returns the modules they replaced, to swap back."""
    old = {name: model.get_submodule(name) for name in modules}
    for name, m in modules.items():
        set_submodule(model, name, m)
    return old


def to_engine(model: nn.Module, engine: str | None = None, dense: bool = False) -> nn.Module:
    """Swap, in place, every target linear of ``model`` for its CPU module; returns ``model``.

    ``engine`` None: the sparse engine available here (:func:`sparse_engine`: ``native`` when its
    kernels are built) for compressed layers (``dense=False``), ``numpy`` for dense ones.
    """
    exported = export_modules(model, dense)
    if engine is None:
        engine = "numpy" if dense else sparse_engine()
    swap_modules(model, build_engine_modules(exported, engine))
    return model
