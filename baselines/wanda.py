"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||, compared within each output row."""
from __future__ import annotations

import torch

from oats.budget import LayerBudget
from oats.masks import budget_mask


def wanda_scores(W: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """|W| * D with D = sqrt(mean x_j^2) (proportional to ||X_j||_2, so the ranking is Wanda's).

    W: (d_out, d_in), d: (d_in,) -> (d_out, d_in) fp32.
    """
    return W.detach().float().abs() * d.float()


def wanda_prune(W: torch.Tensor, d: torch.Tensor, budget: LayerBudget) -> torch.Tensor:
    """W: (d_out, d_in), d: (d_in,) -> pruned copy of W (fp32), row-wise or N:M per the budget."""
    return W.float() * budget_mask(wanda_scores(W, d), budget)
