"""Magnitude pruning: keep the largest |W| (layer-wise by default, or N:M)."""
from __future__ import annotations

import torch

from oats.budget import LayerBudget
from oats.masks import budget_mask


def magnitude_prune(W: torch.Tensor, budget: LayerBudget) -> torch.Tensor:
    """W: (d_out, d_in) -> pruned copy (d_out, d_in) keeping the budget's largest |W|."""
    return W * budget_mask(W.abs(), budget)
