"""Low-rank-only baselines at the same parameter budget: plain SVD and activation-scaled SVD."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from oats.budget import LayerBudget
from oats.registry import Factors, Method, check_param, register


def lowrank_approx(W: torch.Tensor, d: torch.Tensor | None, budget: LayerBudget) -> Factors:
    """Truncated SVD of W (d=None) or of W*D, unscaled after (activation-aware).

    W: (d_out, d_in), d: (d_in,) or None -> Factors with an all-zero sparse part, U: (d_out, r),
    V: (r, d_in), r = budget.rank (budget.nnz must be 0). fp32. Columns with D = 0 are unscaled
    by 1 (they carry no weight in the scaled problem).
    """
    if budget.nnz:
        raise ValueError(f"low-rank-only budget must keep no sparse entries, got nnz={budget.nnz}")
    W32 = W.detach().float()
    scale = torch.ones(W.shape[1], device=W.device) if d is None else d.detach().float().to(W.device)
    U, s, Vh = torch.linalg.svd(W32 * scale if d is not None else W32, full_matrices=False)
    r = budget.rank
    return Factors(torch.zeros_like(W32), U[:, :r] * s[:r], Vh[:r] / torch.where(scale > 0, scale, 1.0))


@register
@dataclass
class LowRank(Method):
    """Low rank only at the same budget; ``scaled`` uses the activation-aware W*D SVD."""

    name: ClassVar[str] = "lowrank"
    granularity: ClassVar[str] = "layer"
    rank_ratio: ClassVar[float] = 1.0
    scaled: bool = True

    def __post_init__(self) -> None:
        check_param(self.name, "scaled", self.scaled, isinstance(self.scaled, bool), "must be true or false")

    def budget(self, d_out, d_in, compression, nm):
        if nm is not None:
            raise ValueError(f"low-rank-only compression has no sparse part; N:M={nm} does not apply")
        return dataclasses.replace(super().budget(d_out, d_in, compression, None), nnz=0)

    def compress(self, W, stats, budget, name="layer"):
        return lowrank_approx(W, stats.column_rms(name) if self.scaled else None, budget)
