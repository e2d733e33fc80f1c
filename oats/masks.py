"""One place that makes masks: keep the highest scores row-wise, layer-wise or N:M.

All functions take a score matrix of shape (d_out, d_in) and return a boolean
mask of the same shape where ``True`` means *kept*. N:M means keep N of every M
consecutive input columns in each row.
"""
from __future__ import annotations

import torch

from . import native
from .budget import NM, BudgetError, LayerBudget


def row_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of every row. scores: (d_out, d_in) -> bool (d_out, d_in)."""
    d_out, d_in = scores.shape
    if not 0 <= k <= d_in:
        raise BudgetError(f"row top-k: k={k} outside [0, d_in={d_in}]")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k == 0:
        return mask
    if k == d_in:
        return mask.fill_(True)
    idx = torch.topk(scores, k, dim=1, sorted=False).indices
    return mask.scatter_(1, idx, True)


class Threshold:
    """The hard threshold of an alternating loop: ``S, mask = thr(R)`` keeps the entries of R with
    the largest magnitudes that ``budget`` allows (:func:`budget_mask`), S = R there and 0 elsewhere.

    A row-wise budget on the CPU with the native kernels (:mod:`oats.native`) starts each call's
    search at the previous call's per-row cut and selects exactly only near it (a few times faster
    than a top-k over every row); the mask is the same as :func:`row_topk_mask`'s (ties at the cut,
    which real weights practically never have, keep the lowest column indices).
    """

    def __init__(self, budget: LayerBudget) -> None:
        self.budget = budget
        self._cut: torch.Tensor | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """R (d_out, d_in) -> (S, mask). S and mask are overwritten by the next call: copy to keep them."""
        k = self.budget.row_nnz
        if (self.budget.nm is None and self.budget.granularity == "row" and 0 < k < R.shape[1]
                and R.device.type == "cpu" and R.dtype == torch.float32 and native.available()):
            if self._cut is None and not torch.isfinite(R).all():
                raise BudgetError(f"row threshold: the matrix has {int((~torch.isfinite(R)).sum())} NaN/infinite "
                                  "entries")
            if self._out is None or self._out[0].shape != R.shape:
                self._out = (torch.empty_like(R), torch.empty(R.shape, dtype=torch.bool))
            S, mask, self._cut = native.row_topk(R, k, self._cut, out=self._out)
            return S, mask
        mask = budget_mask(R.abs(), self.budget)
        return R * mask, mask


def layer_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of the whole matrix. scores: (d_out, d_in) -> bool (d_out, d_in)."""
    if not 0 <= k <= scores.numel():
        raise BudgetError(f"layer top-k: k={k} outside [0, {scores.numel()}]")
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, nm: NM) -> torch.Tensor:
    """Keep the ``nm.n`` largest of every ``nm.m`` consecutive columns in each row.

    scores: (d_out, d_in) with d_in divisible by M -> bool (d_out, d_in).
    """
    d_out, d_in = scores.shape
    if d_in % nm.m:
        raise BudgetError(f"N:M={nm}: M={nm.m} does not divide the input width d_in={d_in}")
    groups = scores.reshape(d_out, d_in // nm.m, nm.m)
    idx = torch.topk(groups, nm.n, dim=2, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True)
    return mask.view(d_out, d_in)


def budget_mask(scores: torch.Tensor, budget: LayerBudget) -> torch.Tensor:
    """The mask a :class:`LayerBudget` asks for: N:M if set, else row or layer top-k."""
    if budget.nm is not None:
        return nm_mask(scores, budget.nm)
    if budget.granularity == "row":
        assert budget.row_nnz is not None
        return row_topk_mask(scores, budget.row_nnz)
    return layer_topk_mask(scores, budget.nnz)
