"""Thin method objects the driver calls; the maths lives in pure per-layer functions.

A method declares which input statistics it needs and turns
(weight, statistics, budget) into a :class:`~oats.layers.CompressedLinear`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from baselines.lowrank import lowrank_approx
from baselines.magnitude import magnitude_prune
from baselines.sparsegpt import sparsegpt_prune
from baselines.wanda import wanda_prune

from .budget import NM, LayerBudget, check_rank_ratio, layer_budget
from .decompose import SVD_SOLVERS, oats_decompose
from .layers import CompressedLinear
from .stats import InputStats


class UnknownMethodError(ValueError):
    pass


@dataclass
class Method:
    """Base: a pruner keeps a sparse part only (rank ratio 0)."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ("second_moment",)
    granularity: ClassVar[str] = "row"
    rank_ratio: ClassVar[float] = 0.0

    def budget(self, d_out: int, d_in: int, compression: float | None, nm: NM | None) -> LayerBudget:
        return layer_budget(d_out, d_in, compression, self.rank_ratio, nm, self.granularity)

    def compress(self, W: torch.Tensor, stats: InputStats | None, budget: LayerBudget,
                 bias: torch.Tensor | None = None, name: str = "layer") -> CompressedLinear:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "rank_ratio": self.rank_ratio, **dataclasses.asdict(self)}


def _wrap(sparse: torch.Tensor, like: torch.Tensor, bias: torch.Tensor | None,
          U: torch.Tensor | None = None, V: torch.Tensor | None = None) -> CompressedLinear:
    dt = like.dtype
    return CompressedLinear(sparse.to(dt), None if U is None else U.to(dt), None if V is None else V.to(dt), bias)


@dataclass
class Magnitude(Method):
    name: ClassVar[str] = "magnitude"
    needs: ClassVar[tuple[str, ...]] = ()
    granularity: ClassVar[str] = "layer"

    def compress(self, W, stats, budget, bias=None, name="layer"):
        return _wrap(magnitude_prune(W.float(), budget), W, bias)


@dataclass
class Wanda(Method):
    name: ClassVar[str] = "wanda"

    def compress(self, W, stats, budget, bias=None, name="layer"):
        return _wrap(wanda_prune(W, stats.column_rms(name), budget), W, bias)


@dataclass
class SparseGPT(Method):
    name: ClassVar[str] = "sparsegpt"
    needs: ClassVar[tuple[str, ...]] = ("second_moment", "hessian")
    granularity: ClassVar[str] = "layer"
    blocksize: int = 128
    percdamp: float = 0.01

    def compress(self, W, stats, budget, bias=None, name="layer"):
        H = stats.hessian_matrix(name)
        return _wrap(sparsegpt_prune(W, H, budget, self.blocksize, self.percdamp), W, bias)


@dataclass
class LowRank(Method):
    """Low rank only at the same budget; ``scaled`` uses the activation-aware W*D SVD."""

    name: ClassVar[str] = "lowrank"
    granularity: ClassVar[str] = "layer"
    rank_ratio: ClassVar[float] = 1.0
    scaled: bool = True

    def budget(self, d_out, d_in, compression, nm):
        if nm is not None:
            raise ValueError(f"low-rank-only compression has no sparse part; N:M={nm} does not apply")
        return dataclasses.replace(super().budget(d_out, d_in, compression, None), nnz=0)

    def compress(self, W, stats, budget, bias=None, name="layer"):
        d = stats.column_rms(name) if self.scaled else None
        dec = lowrank_approx(W, d, budget)
        return _wrap(dec.sparse, W, bias, dec.U, dec.V)


@dataclass
class OATS(Method):
    name: ClassVar[str] = "oats"
    rank_ratio: float = 0.3  # type: ignore[misc]
    iterations: int = 80
    threshold: str = "row"  # "row" (official) or "layer" (ablation)
    scale: bool = True  # D scaling; False is the ablation
    svd: str = "subspace"  # "full" is the exact reference (reproduce/bench_solver.py compares them)

    def __post_init__(self) -> None:
        check_rank_ratio(self.rank_ratio)
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations} must be >= 1")
        if self.threshold not in ("row", "layer"):
            raise ValueError(f"threshold={self.threshold!r}; allowed: row, layer")
        if self.svd not in SVD_SOLVERS:
            raise ValueError(f"svd={self.svd!r}; allowed: {', '.join(SVD_SOLVERS)}")

    def budget(self, d_out, d_in, compression, nm):
        return layer_budget(d_out, d_in, compression, self.rank_ratio, nm, self.threshold)

    def compress(self, W, stats, budget, bias=None, name="layer"):
        d = stats.column_rms(name) if self.scale else None
        dec = oats_decompose(W, d, budget, self.iterations, self.svd)
        return _wrap(dec.sparse, W, bias, dec.U, dec.V)


METHODS: dict[str, type[Method]] = {m.name: m for m in (OATS, Wanda, SparseGPT, Magnitude, LowRank)}


def get_method(name: str, **params) -> Method:
    """Build a method by name; ``rank_ratio`` is accepted for OATS. Unknown names/params raise a clear error."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - allowed
    if unknown:
        shown = sorted(allowed)
        raise UnknownMethodError(
            f"method {name!r} has no parameter(s) {sorted(unknown)}; its parameters: {shown or 'none'}"
        )
    return cls(**params)
