"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"; official code zyxxmu/DSnoT).

Training-free prune-and-grow on top of an initial mask (Wanda's by default; SparseGPT's score or
magnitude as options): in every output row, repeatedly *grow* one pruned weight and *prune* one kept
weight so that the row's expected reconstruction error ``e = sum over pruned j of W_ij * m_j`` shrinks,
``m_j`` being the sum of input j over a sample's tokens, averaged over samples (the official
statistic). The grown weight is taken from the pruned ones ordered by ``W_ij m_j / var_j``
(``pow_of_var_regrowing``), from the end whose sign lowers |e|; the pruned one from the kept
weights, negative contributions first, each side in Wanda-score order (unstructured), or within the
grown weight's N:M group by the initial score (N:M). A row stops when |e| <= ``update_threshold``,
after ``max_cycle_time`` cycles, or (N:M) when a swap would flip the sign of e. Layers whose first
path component is ``skip_layer`` ("mlp" by default, as in the official main.py) keep the initial mask.

Two guards where the official loop has no case: a row stops when its candidates run out (the official
loop would then move already-kept or already-pruned weights and miss the sparsity); the sparsegpt
initial score uses the real Hessian (the official wrapper never accumulates it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from oats.budget import LayerBudget
from oats.masks import budget_mask
from oats.registry import Factors, Method, check_param, register

from .sparsegpt import inverse_cholesky
from .wanda import wanda_scores

INITIAL = ("wanda", "sparsegpt", "magnitude")
SKIP = ("no_skip", "mlp", "self_attn")


def initial_scores(W: torch.Tensor, initial: str, d: torch.Tensor | None = None, H: torch.Tensor | None = None,
                   percdamp: float = 0.01) -> torch.Tensor:
    """(d_out, d_in) fp32 scores of the initial mask (higher = keep): Wanda |W| D, magnitude |W|, or
    SparseGPT's W^2 / diag(H^-1)^2 (H: (d_in, d_in) Hessian, damped by ``percdamp``)."""
    W = W.detach().float()
    if initial == "wanda":
        return wanda_scores(W, d)
    if initial == "magnitude":
        return W.abs()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    Hinv, _ = inverse_cholesky(H, percdamp)
    return W.square() / torch.diag(Hinv).square()


def _take(order: torch.Tensor, ptr: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Per row, the entry of ``order`` at pointer ``ptr[side]`` (clamped into range): (rows, 1)."""
    pos = ptr.gather(1, side).clamp(0, order.shape[1] - 1)
    return order.gather(1, pos)


def _advance(ptr: torch.Tensor, side: torch.Tensor) -> None:
    """Move each row's low pointer (side 0) up or its high pointer (side 1) down."""
    ptr.scatter_(1, side, ptr.gather(1, side) + 1 - 2 * side)


def _negatives_then_positives_reversed(values: torch.Tensor) -> torch.Tensor:
    """Per row, the positions of ``values`` (rows, k): negative ones in order, then the others in
    reverse order, so that the low end offers negatives and the high end positives (both starting
    from the front of the given order)."""
    k = values.shape[1]
    pos = torch.arange(k, device=values.device).expand_as(values)
    key = torch.where(values < 0, pos, 3 * k - pos)  # negatives first in order, then the rest reversed
    return torch.sort(key, dim=1, stable=True).indices


def dsnot_mask(W: torch.Tensor, m: torch.Tensor, var: torch.Tensor, init: torch.Tensor, wanda: torch.Tensor,
               budget: LayerBudget, max_cycle_time: int = 50, update_threshold: float = 0.1,
               pow_of_var_regrowing: float = 1.0) -> torch.Tensor:
    """The kept mask (d_out, d_in) bool after DSnoT's cycles.

    W: (d_out, d_in). m: (d_in,) per-sample input sums. var: (d_in,) within-sample input variance.
    init: (d_out, d_in) initial scores (higher = keep). wanda: (d_out, d_in) Wanda scores (the order
    in which kept weights are offered for pruning, unstructured). budget: row-wise or N:M.
    """
    W = W.detach().float()
    contrib = W * m.float()  # each weight's signed share of the row's expected output
    if budget.nm is not None:
        keep = budget_mask(init, budget)
    else:
        keep = torch.zeros_like(W, dtype=torch.bool).scatter_(
            1, torch.sort(init, dim=1, descending=False, stable=True).indices[:, W.shape[1] - budget.row_nnz:], True)
    pruned_contrib = torch.where(keep, torch.zeros_like(contrib), contrib)
    err = pruned_contrib.sum(1, keepdim=True)
    if pow_of_var_regrowing:  # never-active inputs (variance 0) contribute 0 and stay 0
        grow_score = pruned_contrib / var.float().clamp_min(torch.finfo(torch.float32).tiny).pow(pow_of_var_regrowing)
    else:
        grow_score = pruned_contrib
    grow_order = torch.sort(grow_score, dim=1, stable=True).indices
    rows = W.shape[0]
    grow_ptr = torch.tensor([[0, W.shape[1] - 1]], device=W.device).repeat(rows, 1)
    active = torch.ones(rows, 1, dtype=torch.bool, device=W.device)
    if budget.nm is None:
        kept_by_wanda = torch.sort(torch.where(keep, wanda.float(), torch.full_like(wanda, float("inf"))),
                                   dim=1, stable=True).indices[:, :budget.row_nnz]
        prune_order = kept_by_wanda.gather(1, _negatives_then_positives_reversed(contrib.gather(1, kept_by_wanda)))
        prune_ptr = torch.tensor([[0, budget.row_nnz - 1]], device=W.device).repeat(rows, 1)
    else:
        m_group = budget.nm.m
        group_score = torch.where(keep, init.float(), torch.full_like(init, float("inf")))
        sign0 = torch.sign(err)
    for _ in range(max_cycle_time):
        if not active.any():
            break
        side_g = (err > 0).long()  # e > 0: grow the largest positive contribution
        g_idx = _take(grow_order, grow_ptr, side_g)
        active &= (grow_ptr[:, :1] <= grow_ptr[:, 1:]) & ~keep.gather(1, g_idx)
        _advance(grow_ptr, side_g)
        if budget.nm is None:
            side_p = (err < 0).long()  # e < 0: prune a positive contribution, else a negative one
            p_idx = _take(prune_order, prune_ptr, side_p)
            active &= (prune_ptr[:, :1] <= prune_ptr[:, 1:]) & keep.gather(1, p_idx)
            _advance(prune_ptr, side_p)
        else:  # the grown weight's group gives up its kept weight of lowest initial score
            start = g_idx - g_idx % m_group
            block = start + torch.arange(m_group, device=W.device)
            low, at = group_score.gather(1, block).min(dim=1, keepdim=True)
            p_idx = start + at
            active &= torch.isfinite(low)
            group_score.scatter_(1, p_idx, float("inf"))
        g_val, p_val = contrib.gather(1, g_idx), contrib.gather(1, p_idx)
        active &= err.abs() > update_threshold
        if budget.nm is not None:
            active &= torch.sign(err + p_val - g_val) == sign0
        keep.scatter_(1, p_idx, keep.gather(1, p_idx) & ~active)
        keep.scatter_(1, g_idx, keep.gather(1, g_idx) | active)
        err = err + torch.where(active, p_val - g_val, torch.zeros_like(err))
    return keep


@register
@dataclass
class DSnoT(Method):
    """DSnoT with the official defaults (main.py): Wanda initial mask, 50 cycles, threshold 0.1,
    variance power 1, MLP layers skipped."""

    name: ClassVar[str] = "dsnot"
    initial: str = "wanda"
    max_cycle_time: int = 50
    update_threshold: float = 0.1
    pow_of_var_regrowing: float = 1.0
    skip_layer: str = "mlp"

    def __post_init__(self) -> None:
        check_param(self.name, "initial", self.initial, self.initial in INITIAL, f"allowed: {', '.join(INITIAL)}")
        check_param(self.name, "max_cycle_time", self.max_cycle_time,
                    isinstance(self.max_cycle_time, int) and self.max_cycle_time >= 0, "must be an integer >= 0")
        check_param(self.name, "update_threshold", self.update_threshold,
                    isinstance(self.update_threshold, (int, float)) and self.update_threshold >= 0,
                    "must be a number >= 0")
        check_param(self.name, "pow_of_var_regrowing", self.pow_of_var_regrowing,
                    isinstance(self.pow_of_var_regrowing, (int, float)), "must be a number")
        check_param(self.name, "skip_layer", self.skip_layer, self.skip_layer in SKIP, f"allowed: {', '.join(SKIP)}")

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("second_moment", "mean", "variance", *(("hessian",) if self.initial == "sparsegpt" else ()))

    def compress(self, W, stats, budget, name="layer"):
        d = stats.column_rms(name)
        init = initial_scores(W, self.initial, d, stats.hessian_matrix(name) if self.initial == "sparsegpt" else None)
        if name.split(".")[0] == self.skip_layer:
            return Factors(W.float() * budget_mask(init, budget))
        keep = dsnot_mask(W, stats.column_sum_per_sample(name), stats.column_variance(name), init,
                          wanda_scores(W, d), budget, self.max_cycle_time, self.update_threshold,
                          self.pow_of_var_regrowing)
        return Factors(W.float() * keep)
