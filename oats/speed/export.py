"""A compressed model's linears as the CPU runs them (numpy arrays, scipy CSR), and its ONNX export.

* :func:`export_modules`: every target linear as an :class:`ExportedLinear`: dense, sparse
  (unstructured or N:M, as CSR with int32 indices) or sparse + low-rank. :mod:`oats.speed.engines`
  runs them in-process.
* :func:`export_onnx`: fp32, static shapes; the sparse part is a dense initialiser with zeros
  (what DeepSparse exploits; ONNX Runtime densifies it) and the low-rank part two MatMuls.

Attention, norms, embeddings and the output head stay in PyTorch in every variant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..layers import CompressedLinear, SplitLinear, iter_compressed

NM_PATTERNS = ((2, 4), (4, 8), (2, 8), (1, 4), (8, 16))


@dataclass
class ExportedLinear:
    """One linear layer as the CPU runs it: ``y = x W^T`` (dense) or ``x S^T + (x V^T) U^T`` (+ bias).

    weight: (d_out, d_in) for a dense layer. sparse: scipy CSR (d_out, d_in) with int32 indices.
    U: (d_out, r), V: (r, d_in) (r may be 0). bias: (d_out,). nm: the N:M pattern the sparse part
    follows, if any. All arrays fp32.
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

    def weight_bytes(self, fmt: str = "csr", value_bytes: int = 4) -> int:
        """Bytes of weights read per forward in format ``fmt`` with ``value_bytes`` per value (4 fp32,
        2 bf16): ``dense`` every weight; ``csr`` values + int32 column indices + row pointers;
        ``bitmask`` values + one bit per weight + int64 row offsets (:mod:`oats.sparse_format`).
        A dense layer is dense in every format; ``dense`` stores a sparse part with its zeros (as an
        ONNX initialiser does). The low-rank factors are dense values in every format."""
        if fmt not in ("dense", "csr", "bitmask"):
            raise ValueError(f"weight format {fmt!r} unknown; allowed: dense, csr, bitmask")
        if self.weight is not None:
            return value_bytes * self.d_out * self.d_in
        if fmt == "dense":
            sparse = value_bytes * self.d_out * self.d_in
        elif fmt == "csr":
            sparse = (value_bytes + 4) * self.nnz + 4 * (self.d_out + 1)
        else:
            sparse = value_bytes * self.nnz + self.d_out * ((self.d_in + 7) // 8) + 8 * self.d_out
        return sparse + value_bytes * self.rank * (self.d_out + self.d_in)

    def dense_weight(self) -> np.ndarray:
        """The layer's dense equivalent, (d_out, d_in): ``W``, or ``S + U V``."""
        if self.weight is not None:
            return self.weight
        w = self.sparse.toarray()
        if self.rank:
            w = w + self.U @ self.V
        return w


def rowwise_csr(values: np.ndarray, cols: np.ndarray, d_in: int):
    """A CSR matrix (d_out, d_in) with the same count k of nonzeros in every row (as row-wise
    pruning keeps): ``cols`` (d_out, k), sorted along each row, and their ``values`` (d_out * k
    values, row by row). Indices and row pointers int32."""
    import scipy.sparse as sp

    d_out, k = cols.shape
    indptr = np.arange(0, d_out * k + 1, k, dtype=np.int32) if k else np.zeros(d_out + 1, dtype=np.int32)
    return sp.csr_matrix((values.reshape(-1), cols.reshape(-1).astype(np.int32), indptr), shape=(d_out, d_in))


def detect_nm(mask: torch.Tensor) -> str | None:
    """The first pattern of :data:`NM_PATTERNS` (keep N of every M input columns) that ``mask``
    (d_out, d_in), bool, follows."""
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


def _specs(exported: dict) -> list[ExportedLinear]:
    return [p for s in exported.values() for p in (s if isinstance(s, list) else [s])]


def weight_bytes(exported: dict, fmt: str = "csr", value_bytes: int = 4) -> int:
    """Weight bytes read per forward by all of :func:`export_modules`' layers (:meth:`ExportedLinear.weight_bytes`)."""
    return sum(s.weight_bytes(fmt, value_bytes) for s in _specs(exported))


def weight_params(exported: dict) -> int:
    """Weight parameters kept by all of :func:`export_modules`' layers (bias excluded)."""
    return sum(s.params for s in _specs(exported))


def has_compressed(exported: dict) -> bool:
    """True when any of :func:`export_modules`' layers is not dense (a split layer: its first part)."""
    return any((s[0] if isinstance(s, list) else s).kind != "dense" for s in exported.values())


class _Logits(nn.Module):
    """A causal LM as ``input_ids`` (batch, tokens) -> logits (batch, tokens, vocab), for export."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)  # explicit: transformers' packed-sequence check (aten::diff) does not export
        out = self.inner(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.logits if hasattr(out, "logits") else out[0]


def export_onnx(model: nn.Module, input_ids: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` (compressed or not) to ONNX, fp32: ``input_ids`` (batch, tokens), int64, of a
    fixed shape -> ``logits`` (batch, tokens, vocab).

    Static shapes, no KV cache (a prefill graph). CompressedLinear layers export as
    ``MatMul(x, S^T) + MatMul(MatMul(x, V^T), U^T)`` with S a dense initialiser holding its zeros.
    Needs the ``onnx`` package (extra ``.[speed]``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Logits(model).eval()
    with torch.no_grad():
        torch.onnx.export(wrapped, (input_ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                          opset_version=opset, dynamo=False, do_constant_folding=False)
    return path
