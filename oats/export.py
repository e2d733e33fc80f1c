"""Export a compressed model for CPU inference: every linear becomes dense, sparse, or sparse + low-rank.

Two targets:

* **in-process** (:func:`to_engine`): each linear is swapped for a :class:`CPULinear` that runs on
  numpy arrays. The sparse part is a CSR matrix multiplied by MKL (PyPI ``sparse-dot-mkl`` + ``mkl``)
  or, when MKL is unavailable, by scipy; the low-rank factors are dense products (MKL gemm with
  MKL, numpy otherwise). Dense layers can run on ``torch`` (``F.linear``), ``numpy`` (OpenBLAS) or
  ``mkl`` (MKL gemm), so a speedup is measured against the fastest dense engine.
* **ONNX** (:func:`export_onnx`): fp32, static shapes; the sparse part is a dense initialiser with
  zeros (what DeepSparse exploits; ONNX Runtime densifies it) and the low-rank part two MatMuls.

Attention, norms, embeddings and the output head stay in PyTorch in every variant.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import CompressedLinear, SplitLinear, iter_compressed, set_submodule

DENSE_ENGINES = ("torch", "numpy", "mkl")   # dense layers
SPARSE_ENGINES = ("mkl", "scipy")           # CSR sparse part (+ dense low-rank factors)
NM_PATTERNS = ((2, 4), (4, 8), (2, 8), (1, 4), (8, 16))


# ---------------------------------------------------------------- engines available here

_MKL: object | None = None
_MKL_ERROR: str | None = None


def mkl_module():
    """``sparse_dot_mkl`` with the mkl wheel's ``libmkl_rt`` found, or None (see :func:`mkl_error`).

    Sets, unless already set, ``MKL_RT`` (the library inside this environment) and
    ``MKL_THREADING_LAYER=GNU``, so MKL runs on the same GNU OpenMP pool as torch (one pool).
    """
    global _MKL, _MKL_ERROR
    if _MKL is not None or _MKL_ERROR is not None:
        return _MKL
    if "MKL_RT" not in os.environ:
        for lib in sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))):
            os.environ["MKL_RT"] = lib
            break
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    try:
        import sparse_dot_mkl

        _MKL = sparse_dot_mkl
    except ImportError as e:  # the package, or the MKL runtime, is missing
        _MKL_ERROR = f"{type(e).__name__}: {e}".split("\n")[0]
    return _MKL


def mkl_error() -> str | None:
    mkl_module()
    return _MKL_ERROR


def sparse_engine() -> str:
    """The sparse engine that runs here: ``mkl`` when sparse-dot-mkl and MKL load, else ``scipy``."""
    return "mkl" if mkl_module() is not None else "scipy"


# ---------------------------------------------------------------- one exported linear

@dataclass
class ExportedLinear:
    """One linear layer as the CPU runs it: ``y = x W^T`` (dense) or ``x S^T + (x V^T) U^T`` (+ bias).

    weight: (d_out, d_in) for a dense layer. sparse: scipy CSR (d_out, d_in) with int32 indices.
    U: (d_out, r), V: (r, d_in) (r may be 0). nm: the N:M pattern the sparse part follows, if any.
    """

    d_out: int
    d_in: int
    weight: np.ndarray | None = None
    sparse: object | None = None
    U: np.ndarray | None = None
    V: np.ndarray | None = None
    bias: np.ndarray | None = None
    nm: str | None = None

    @property
    def rank(self) -> int:
        return 0 if self.U is None else self.U.shape[1]

    @property
    def kind(self) -> str:
        if self.weight is not None:
            return "dense"
        return "sparse+lowrank" if self.rank else "sparse"

    @property
    def nnz(self) -> int:
        return self.d_out * self.d_in if self.weight is not None else int(self.sparse.nnz)

    @property
    def params(self) -> int:
        """Weight parameters kept (bias excluded)."""
        return self.nnz + self.rank * (self.d_out + self.d_in)

    def weight_bytes(self, index_bytes: int = 4) -> int:
        """Bytes of weights read per forward: fp32 values, CSR int32 column indices and row pointers."""
        if self.weight is not None:
            return 4 * self.d_out * self.d_in
        csr = (4 + index_bytes) * self.nnz + index_bytes * (self.d_out + 1)
        return csr + 4 * self.rank * (self.d_out + self.d_in)

    def dense_weight(self) -> np.ndarray:
        if self.weight is not None:
            return self.weight
        w = self.sparse.toarray()
        if self.rank:
            w = w + self.U @ self.V
        return w


def detect_nm(mask: torch.Tensor) -> str | None:
    """The first pattern of :data:`NM_PATTERNS` (keep N of every M input columns) ``mask`` follows."""
    d_out, d_in = mask.shape
    for n, m in NM_PATTERNS:
        if d_in % m == 0 and int(mask.reshape(d_out, d_in // m, m).sum(-1).max()) <= n:
            return f"{n}:{m}"
    return None


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def export_linear(module: nn.Module, dense: bool = False) -> ExportedLinear:
    """A :class:`CompressedLinear` (sparse part + factors) or ``nn.Linear`` (dense) as numpy / CSR.

    ``dense=True`` merges a compressed layer into its dense equivalent (the dense reference).
    """
    import scipy.sparse as sp

    if isinstance(module, CompressedLinear):
        bias = _np(module.bias)
        if dense:
            return ExportedLinear(module.out_features, module.in_features, weight=_np(module.merged_weight()),
                                  bias=bias)
        S = module.sparse.detach().to(torch.float32).cpu()
        csr = sp.csr_matrix(S.numpy())
        csr.indices = csr.indices.astype(np.int32)
        csr.indptr = csr.indptr.astype(np.int32)
        U, V = (_np(module.U), _np(module.V)) if module.rank else (None, None)
        return ExportedLinear(module.out_features, module.in_features, sparse=csr, U=U, V=V, bias=bias,
                              nm=detect_nm(S != 0))
    if isinstance(module, nn.Linear):
        return ExportedLinear(module.out_features, module.in_features, weight=_np(module.weight),
                              bias=_np(module.bias))
    raise TypeError(f"cannot export {type(module).__name__}; expected CompressedLinear or nn.Linear")


# ---------------------------------------------------------------- in-process CPU modules

class CPULinear(nn.Module):
    """Runs one :class:`ExportedLinear` on numpy arrays with the named engine (see module doc).

    ``engine``: for a dense layer ``torch``, ``numpy`` or ``mkl``; for a sparse layer ``mkl`` or
    ``scipy``. The sparse product is computed as ``S @ x^T`` with ``x^T`` C-contiguous (MKL's fast
    layout here); with MKL the low-rank product is an MKL gemm accumulated into the same output.
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
        self._run: Callable[[np.ndarray], np.ndarray] = self._choose()

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
        if self.engine == "torch":
            return F.linear(x, self._torch_w.to(x.dtype), None if self._torch_b is None else self._torch_b.to(x.dtype))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).detach().to(torch.float32).cpu().numpy()
        y = self._run(x2)
        if self.spec.bias is not None:
            y = y + self.spec.bias
        return torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nm = f", nm={self.spec.nm}" if self.spec.nm else ""
        return f"in={self.in_features}, out={self.out_features}, kind={self.spec.kind}, rank={self.spec.rank}, " \
               f"engine={self.engine}{nm}"


class CPUSplitLinear(nn.Module):
    """A :class:`SplitLinear` (fused projection kept as row blocks) on CPU: concatenated part outputs."""

    def __init__(self, parts: list[CPULinear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The linears an export converts: every compressed module, or (for an uncompressed model) every
    ``nn.Linear`` except the output head (``get_output_embeddings``)."""
    found: dict[str, nn.Module] = dict(iter_compressed(model))
    if found:
        return found
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def export_modules(model: nn.Module, dense: bool = False) -> dict[str, ExportedLinear | list[ExportedLinear]]:
    """Every target linear of ``model`` exported (a list for a SplitLinear's parts)."""
    out: dict[str, ExportedLinear | list[ExportedLinear]] = {}
    for name, m in target_modules(model).items():
        if isinstance(m, SplitLinear):
            out[name] = [export_linear(p, dense) for p in m.parts.values()]
        else:
            out[name] = export_linear(m, dense)
    return out


def build_engine_modules(exported: dict, engine: str) -> dict[str, nn.Module]:
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


def weight_bytes(exported: dict) -> int:
    return sum(sum(p.weight_bytes() for p in s) if isinstance(s, list) else s.weight_bytes()
               for s in exported.values())


def weight_params(exported: dict) -> int:
    return sum(sum(p.params for p in s) if isinstance(s, list) else s.params for s in exported.values())


# ---------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, input_ids: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` (compressed or not; its logits for fixed-shape ``input_ids``) to ONNX, fp32.

    Static shapes, no KV cache (a prefill graph). CompressedLinear layers export as
    ``MatMul(x, S^T) + MatMul(MatMul(x, V^T), U^T)`` with S a dense initialiser holding its zeros.
    Needs the ``onnx`` package (extra ``.[speed]``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    class _Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            mask = torch.ones_like(ids)  # explicit: transformers' packed-sequence check (aten::diff) does not export
            out = self.inner(input_ids=ids, attention_mask=mask, use_cache=False)
            return out.logits if hasattr(out, "logits") else out[0]

    wrapped = _Logits(model).eval()
    with torch.no_grad():
        torch.onnx.export(wrapped, (input_ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                          opset_version=opset, dynamo=False, do_constant_folding=False)
    return path
