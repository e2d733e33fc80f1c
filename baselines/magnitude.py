"""Magnitude pruning: keep the largest |W| (layer-wise by default, or N:M)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from oats.budget import LayerBudget
from oats.masks import budget_mask
from oats.registry import Factors, Method, register


def magnitude_prune(W: torch.Tensor, budget: LayerBudget) -> torch.Tensor:
    """W: (d_out, d_in) -> pruned copy (d_out, d_in) keeping the budget's largest |W|."""
    return W * budget_mask(W.abs(), budget)


@register
@dataclass
class Magnitude(Method):
    name: ClassVar[str] = "magnitude"
    needs: ClassVar[tuple[str, ...]] = ()
    granularity: ClassVar[str] = "layer"

    def compress(self, W, stats, budget, name="layer"):
        return Factors(magnitude_prune(W.float(), budget))

    @staticmethod
    def score(W: torch.Tensor, stats, name: str = "layer") -> torch.Tensor:
        """|W|: (d_out, d_in) fp32 (an OWL score, ``owl.score=magnitude``)."""
        return W.detach().float().abs()
