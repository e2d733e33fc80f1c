"""Low-rank-only baselines at the same parameter budget: plain SVD and activation-scaled SVD."""
from __future__ import annotations

import torch

from oats.budget import LayerBudget
from oats.decompose import Decomposition, oats_decompose


def lowrank_approx(W: torch.Tensor, d: torch.Tensor | None, budget: LayerBudget) -> Decomposition:
    """Truncated SVD of W (d=None) or of W*D unscaled after (activation-aware).

    W: (d_out, d_in), d: (d_in,) or None -> Decomposition with an all-zero sparse
    part, U: (d_out, r), V: (r, d_in), r = budget.rank (budget.nnz must be 0).
    """
    if budget.nnz:
        raise ValueError(f"low-rank-only budget must keep no sparse entries, got nnz={budget.nnz}")
    return oats_decompose(W, d, budget, iterations=1)
