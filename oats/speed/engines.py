"""In-process CPU engines: each exported linear becomes a module that computes on numpy arrays.

The sparse part is a CSR matrix multiplied by MKL (PyPI ``sparse-dot-mkl`` + ``mkl``) or, when MKL
is unavailable, by scipy; the low-rank factors are dense products (MKL gemm with MKL, numpy
otherwise). Dense layers can run on ``torch`` (``F.linear``), ``numpy`` (OpenBLAS) or ``mkl`` (MKL
gemm), so a speedup is measured against the fastest dense engine. :func:`to_engine` swaps a
model's linears for these modules.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import set_submodule
from .env import mkl_error, mkl_module, sparse_engine
from .export import ExportedLinear, export_modules

DENSE_ENGINES = ("torch", "numpy", "mkl")   # dense layers
SPARSE_ENGINES = ("mkl", "scipy")           # CSR sparse part (+ dense low-rank factors)


def engines_here(dense: bool) -> list[str]:
    """The in-process engines a variant is timed on here: every dense engine (``mkl`` if MKL loads)
    for a dense variant, the sparse engine (:func:`oats.speed.env.sparse_engine`) for a compressed one."""
    if not dense:
        return [sparse_engine()]
    return [e for e in DENSE_ENGINES if e != "mkl" or mkl_module() is not None]


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
        self._torch_w = torch.from_numpy(spec.weight) if spec.weight is not None else None
        self._torch_b = None if spec.bias is None else torch.from_numpy(spec.bias)
        self._wt = np.ascontiguousarray(spec.weight.T) if spec.weight is not None and engine != "torch" else None
        self._ut = None if spec.U is None else np.ascontiguousarray(spec.U.T)   # (r, d_out)
        self._vt = None if spec.V is None else np.ascontiguousarray(spec.V.T)   # (d_in, r)
        self.matmul: Callable[[np.ndarray], np.ndarray] = self._choose()

    def _choose(self) -> Callable[[np.ndarray], np.ndarray]:
        spec, mkl = self.spec, mkl_module() if self.engine == "mkl" else None
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
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).detach().to(torch.float32).cpu().numpy()
        y = self.matmul(x2)
        if self.spec.bias is not None:
            y = y + self.spec.bias
        return torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).view(*shape[:-1], self.out_features)

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

    ``engine`` None: the sparse engine available here (:func:`sparse_engine`) for compressed layers
    (``dense=False``), ``numpy`` for dense ones.
    """
    exported = export_modules(model, dense)
    if engine is None:
        engine = "numpy" if dense else sparse_engine()
    swap_modules(model, build_engine_modules(exported, engine))
    return model
