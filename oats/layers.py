"""The one compressed-layer module: sparse S plus low-rank U V, and its (de)serialisation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .io import TensorFile, atomic_save_tensors
from .sparse_format import STORAGE_DTYPES, SUFFIXES, BitmaskTensor


def _owned(t: torch.Tensor, copy: bool = True) -> nn.Parameter:
    """A frozen, contiguous copy (``copy=False``: ``t`` itself when it is already contiguous, for a
    tensor nothing else holds). Contiguous so that the layout (and so the matmul kernel and its last
    bits) is the same before and after a save/load: SVD factors often come back transposed."""
    t = t.detach()
    if copy or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return nn.Parameter(t, requires_grad=False)


class CompressedLinear(nn.Module):
    """y = x S^T + (x V^T) U^T + b.

    S: (d_out, d_in) sparse part stored densely (zeros are pruned entries).
    U: (d_out, r), V: (r, d_in) low-rank factors (r may be 0).
    bias: (d_out,) or None. The module keeps copies; ``copy=False`` keeps the given (contiguous)
    tensors themselves, for a caller that holds no other reference (the loader: no second copy).
    ``use_sparse`` / ``use_lowrank`` switch a term off (e.g. to isolate it in attention rollout).
    """

    def __init__(
        self,
        sparse: torch.Tensor,
        U: torch.Tensor | None = None,
        V: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        copy: bool = True,
    ) -> None:
        super().__init__()
        d_out, d_in = sparse.shape
        if U is None or V is None:
            U = sparse.new_zeros(d_out, 0)
            V = sparse.new_zeros(0, d_in)
        if U.shape[0] != d_out or V.shape[1] != d_in or U.shape[1] != V.shape[0]:
            raise ValueError(f"factor shapes U{tuple(U.shape)} V{tuple(V.shape)} do not fit S{tuple(sparse.shape)}")
        self.in_features, self.out_features = d_in, d_out
        self.sparse = _owned(sparse, copy)
        self.U = _owned(U.to(sparse.dtype), copy)
        self.V = _owned(V.to(sparse.dtype), copy)
        self.bias = None if bias is None else _owned(bias, copy)
        self.use_sparse = True
        self.use_lowrank = True

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent S + U V (read-only; for code that inspects ``.weight``)."""
        return self.merged_weight()

    def merged_weight(self) -> torch.Tensor:
        w = self.sparse if self.use_sparse else torch.zeros_like(self.sparse)
        if self.rank and self.use_lowrank:
            w = w + (self.U.float() @ self.V.float()).to(w.dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.sparse) if self.use_sparse else x.new_zeros(*x.shape[:-1], self.out_features)
        if self.rank and self.use_lowrank:  # in place: y is this call's own tensor (same sums, one allocation less)
            y.add_(F.linear(F.linear(x, self.V), self.U))
        return y if self.bias is None else y.add_(self.bias)

    def merge(self) -> nn.Linear:
        """A dense nn.Linear computing the same function."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.sparse.device, dtype=self.sparse.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.merged_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.sparse))

    def num_params(self, include_bias: bool = True) -> int:
        """Parameters actually kept: nonzeros of S, entries of U and V, and (optionally) the bias."""
        bias = 0 if self.bias is None or not include_bias else self.bias.numel()
        return self.nnz + self.U.numel() + self.V.numel() + bias

    def extra_repr(self) -> str:
        density = self.nnz / self.sparse.numel()
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, sparse_density={density:.3f}"


class SplitLinear(nn.Module):
    """A fused projection (e.g. Phi-3 qkv_proj) kept as separately compressed row blocks.

    Output = concatenation of each part's output along the last dimension.
    """

    def __init__(self, parts: dict[str, CompressedLinear]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        first = next(iter(parts.values()))
        self.in_features = first.in_features
        self.out_features = sum(p.out_features for p in parts.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts.values()], dim=-1)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([p.merged_weight() for p in self.parts.values()], dim=0)

    def merge(self) -> nn.Linear:
        merged = [p.merge() for p in self.parts.values()]
        has_bias = merged[0].bias is not None
        lin = nn.Linear(self.in_features, self.out_features, bias=has_bias,
                        device=merged[0].weight.device, dtype=merged[0].weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.cat([m.weight for m in merged]))
            if has_bias:
                lin.bias.copy_(torch.cat([m.bias for m in merged]))
        return lin

    def num_params(self, include_bias: bool = True) -> int:
        return sum(p.num_params(include_bias) for p in self.parts.values())


COMPRESSED_TYPES = (CompressedLinear, SplitLinear)


def iter_compressed(root: nn.Module) -> Iterator[tuple[str, CompressedLinear | SplitLinear]]:
    """Every outermost compressed module under ``root`` with its path: a :class:`SplitLinear` is
    yielded as a whole, never its parts. The one walk over compressed modules."""
    inside: tuple[str, ...] = ()
    for name, m in root.named_modules():
        if isinstance(m, COMPRESSED_TYPES) and not (inside and name.startswith(inside)):
            inside += (f"{name}.",)
            yield name, m


def compressed_linears(m: CompressedLinear | SplitLinear) -> list[CompressedLinear]:
    """The CompressedLinear(s) a compressed module consists of."""
    return list(m.parts.values()) if isinstance(m, SplitLinear) else [m]


def set_terms(model: nn.Module, sparse: bool = True, lowrank: bool = True) -> None:
    """Switch the sparse and/or low-rank term of every CompressedLinear in ``model`` on or off."""
    for _, m in iter_compressed(model):
        for lin in compressed_linears(m):
            lin.use_sparse, lin.use_lowrank = sparse, lowrank


def merge_all(model: nn.Module) -> nn.Module:
    """Replace every compressed module by its dense nn.Linear, in place."""
    for name, m in list(iter_compressed(model)):
        set_submodule(model, name, m.merge())
    return model


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# ---------------------------------------------------------------- serialisation

def _linear_tensors(prefix: str, m: CompressedLinear, compact: bool = False) -> dict[str, torch.Tensor]:
    if compact and m.sparse.dtype in STORAGE_DTYPES:
        out = BitmaskTensor.from_dense(m.sparse).state_dict(f"{prefix}.sparse")
    else:
        out = {f"{prefix}.sparse": m.sparse}
    out.update({f"{prefix}.U": m.U, f"{prefix}.V": m.V})
    if m.bias is not None:
        out[f"{prefix}.bias"] = m.bias
    return out


def compressed_state(root: nn.Module, compact: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Tensors and structure of every compressed module under ``root``.

    Returns (tensors keyed by '<module path>[.<part>].<sparse|U|V|bias>', structure
    {module path: [] for a CompressedLinear, [part names] for a SplitLinear}). ``compact``: the sparse
    part in the bitmask format (:mod:`oats.sparse_format`: ``.sparse.compressed``, ``.sparse.bitmask``,
    ``.sparse.shape``, ``.sparse.row_offsets``) instead of a dense matrix.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, list[str]] = {}
    for name, m in iter_compressed(root):
        if isinstance(m, SplitLinear):
            for part, pm in m.parts.items():
                tensors.update(_linear_tensors(f"{name}.{part}", pm, compact))
            structure[name] = list(m.parts)
        else:
            tensors.update(_linear_tensors(name, m, compact))
            structure[name] = []
    return tensors, structure


def _sparse_part(tensors, key: str) -> torch.Tensor:
    """The dense sparse part ``key``: stored dense, or in the bitmask format (expanded exactly)."""
    dense = tensors.get(key)
    if dense is not None:
        return dense
    if f"{key}.bitmask" not in tensors:
        raise KeyError(f"compressed tensor {key!r} is missing (neither dense nor bitmask-format)")
    b = BitmaskTensor.from_state_dict(tensors, key)
    return b.to_dense(b.values.dtype)


LINEAR_KEYS = ("sparse", *(f"sparse.{s}" for s in SUFFIXES), "U", "V", "bias")  # a CompressedLinear's stored tensors


def _build_linear(tensors, key: str, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> CompressedLinear:
    """The CompressedLinear ``key`` of ``tensors`` (dense or bitmask-format sparse part), floating
    tensors moved to ``device`` in ``dtype`` (default: as stored). Stored tensors are copied once (they
    may live in the file's mapping); an expanded bitmask part is already the module's own."""
    def own(t: torch.Tensor | None, fresh: bool = False) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype or t.dtype, copy=not fresh)

    expanded = f"{key}.sparse" not in tensors
    return CompressedLinear(own(_sparse_part(tensors, f"{key}.sparse"), fresh=expanded), own(tensors.get(f"{key}.U")),
                            own(tensors.get(f"{key}.V")), own(tensors.get(f"{key}.bias")), copy=False)


def apply_compressed_state(root: nn.Module, read, structure: dict[str, list[str]], device: torch.device | None = None,
                           dtype: torch.dtype | None = None) -> None:
    """Swap the modules named in ``structure`` (paths relative to ``root``) for compressed ones, one at a
    time: ``read(key)`` gives the tensors of linear ``key`` (a mapping holding its ``LINEAR_KEYS``), so
    only one layer's stored and expanded tensors are in memory beside the model."""
    for name, parts in structure.items():
        try:
            root.get_submodule(name)
        except AttributeError:
            raise KeyError(f"compressed module {name!r} does not exist in this model") from None
        if parts:
            new: nn.Module = SplitLinear({p: _build_linear(read(f"{name}.{p}"), f"{name}.{p}", device, dtype)
                                          for p in parts})
        else:
            new = _build_linear(read(name), name, device, dtype)
        set_submodule(root, name, new)


def save_compressed(model: nn.Module, path: str | Path, compact: bool = True) -> Path:
    """Save every compressed module of ``model`` to ``path`` (a .safetensors file), atomically.

    ``compact`` (default): each sparse part in the bitmask format (one bit per weight plus the kept
    values, in the module's dtype), so an OATS layer at 50% takes about half its dense size;
    :func:`load_compressed` rebuilds exactly the same tensors. ``compact=False`` stores S densely.
    """
    path = Path(path)
    tensors, structure = compressed_state(model, compact)
    if not structure:
        raise ValueError("the model has no compressed layers to save")
    atomic_save_tensors(path, tensors, metadata={"oats_structure": json.dumps(structure)})
    return path


def load_compressed(model: nn.Module, path: str | Path, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> nn.Module:
    """Load compressed layers saved by :func:`save_compressed` into a model of the same architecture,
    on ``device`` in ``dtype`` (default: those of the model's parameters)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed checkpoint at {path}")
    dtype = dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    with TensorFile(path) as f:  # plain reads: no mapped file page stays resident beside the copies
        meta = f.metadata() or {}
        if "oats_structure" not in meta:
            raise ValueError(f"{path} is not a compressed-model file (no oats_structure metadata)")
        structure = json.loads(meta["oats_structure"])
        stored = set(f.keys())
        lacking = [k for name, parts in structure.items() for k in ([f"{name}.{p}" for p in parts] or [name])
                   if f"{k}.sparse" not in stored and f"{k}.sparse.bitmask" not in stored]
        if lacking:  # checked before any layer is swapped
            raise ValueError(f"{path} lacks the sparse part of {', '.join(lacking[:3])}"
                             f"{' ...' if len(lacking) > 3 else ''}: the file is incomplete")

        def read(key: str) -> dict[str, torch.Tensor]:
            return {k: f.get_tensor(k) for k in (f"{key}.{s}" for s in LINEAR_KEYS) if k in stored}

        apply_compressed_state(model, read, structure, device, dtype)
    return model
