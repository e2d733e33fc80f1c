"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||, compared within each output row."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from oats.budget import LayerBudget
from oats.masks import budget_mask
from oats.registry import Factors, Method, register


def wanda_scores(W: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """|W| * D with D = sqrt(mean x_j^2) (proportional to ||X_j||_2, so the ranking is Wanda's).

    W: (d_out, d_in), d: (d_in,) -> (d_out, d_in) fp32.
    """
    return W.detach().float().abs() * d.float()


def wanda_prune(W: torch.Tensor, d: torch.Tensor, budget: LayerBudget) -> torch.Tensor:
    """W: (d_out, d_in), d: (d_in,) -> pruned copy of W (fp32), row-wise or N:M per the budget."""
    return W.float() * budget_mask(wanda_scores(W, d), budget)


@register
@dataclass
class Wanda(Method):
    name: ClassVar[str] = "wanda"

    def compress(self, W, stats, budget, name="layer"):
        return Factors(wanda_prune(W, stats.column_rms(name), budget))

    @staticmethod
    def score(W: torch.Tensor, stats, name: str = "layer") -> torch.Tensor:
        """|W| * D: (d_out, d_in) fp32 (OWL's default score)."""
        return wanda_scores(W, stats.column_rms(name))
