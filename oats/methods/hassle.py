"""Reconstruction-aware sparse + low rank, in the spirit of HASSLE-free (Makni et al. 2025, arXiv 2502.00899).

OATS fits ``S + L`` to the weight with its columns scaled by the inputs' RMS; this method fits the
layer's *outputs*: it minimises

    f(S, L) = || (W - S - L) R^T ||_F^2 = tr((W - S - L) H_d (W - S - L)^T),   H_d = H + damping * mean(diag H) I = R^T R

(H the layer's input Hessian, SparseGPT's ``(2/n) X^T X``) under OATS's budget (rank ratio, or an
N:M sparse part plus a rank), alternating

* an S-step: SparseGPT (OBS pruning with error propagation) of ``W - L`` with the same Hessian, N:M
  included; kept only when it lowers f (SparseGPT is a greedy approximation, so a new S can be worse);
* an L-step, exact and in closed form: the best rank-r fit of ``W - S`` in the ``R^T``-weighted norm,
  ``L = SVD_r((W - S) R^T) R^-T`` (the reference code takes Adam steps instead); ``svd="subspace"``
  (default) gets the truncated SVD by OATS's warm-started subspace iteration, kept only when it does
  not lose to the previous L.

So f never increases. ``init``: "oats" (default: start from OATS's decomposition at the same budget,
20 subspace iterations) or "zero" (L = 0: the first S-step is plain SparseGPT; the greedy S-step then
tends to stall once L has settled, tests/test_methods.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from baselines.sparsegpt import HessianError, sparsegpt_prune

from ..budget import LayerBudget, check_rank_ratio, layer_budget
from ..registry import Factors, Method, check_param, register
from .oats import SVD_SOLVERS, TruncatedSVD, oats_decompose

INITS = ("zero", "oats")


@dataclass
class Reconstruction(Factors):
    """W_hat = sparse + U @ V (fp32); ``objective``: f after the initialisation and after each alternation."""

    objective: list[float] = field(default_factory=list)


def damped_cholesky(H: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper R with R^T R = H + damping * mean(diag H) I (never-active inputs get 1 on the diagonal).

    H: (d_in, d_in) -> R: (d_in, d_in). Raises HessianError naming the damping when that is not
    positive definite.
    """
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damping * torch.mean(torch.diag(H)))
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise HessianError(f"the Hessian is not positive definite with damping={damping} x mean(diag H); "
                           "raise the damping")
    return L.T


def weighted_lowrank(A: torch.Tensor, R: torch.Tensor, rank: int, svd: TruncatedSVD | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` L in the R^T-weighted norm: argmin ||(A - L) R^T||_F, as factors L = U @ V.

    A: (d_out, d_in), R: (d_in, d_in) upper triangular -> U: (d_out, rank), V: (rank, d_in), and the
    remaining error ||(A - L) R^T||_F^2 (= ||A R^T||^2 - sum of the kept singular values squared: the
    kept part is a projection of A R^T). ``svd``: a (warm-started) truncated SVD of that rank; exact if None.
    """
    AR = A @ R.T
    total = float(AR.square().sum())
    if rank == 0:
        return A.new_zeros(A.shape[0], 0), A.new_zeros(0, A.shape[1]), total
    Us, s, Vh = (svd or TruncatedSVD(rank, "full"))(AR)
    V = torch.linalg.solve_triangular(R, Vh.T, upper=True).T  # Vh_r R^-T
    return Us * s, V, total - float(s.square().sum())


def objective(W: torch.Tensor, S: torch.Tensor, U: torch.Tensor, V: torch.Tensor, R: torch.Tensor) -> float:
    """f(S, L) = ||(W - S - U V) R^T||_F^2."""
    return float(torch.linalg.norm((W - S - U @ V) @ R.T) ** 2)


def reconstruct(W: torch.Tensor, H: torch.Tensor, budget: LayerBudget, alternations: int = 10,
                damping: float = 0.01, init: str = "oats", d: torch.Tensor | None = None,
                blocksize: int = 128, svd: str = "subspace") -> Reconstruction:
    """Alternate S-steps and exact L-steps; W: (d_out, d_in), H: (d_in, d_in), d: (d_in,) input RMS
    (for init="oats"). ``svd``: the L-step's truncated SVD, "subspace" (warm-started across
    alternations, as OATS's) or "full". Returns the factors and f after the initialisation and each
    alternation."""
    W = W.detach().float()
    R = damped_cholesky(H, damping)
    r = budget.rank
    if init == "oats" and r and budget.nnz:
        start = oats_decompose(W, d, budget, iterations=20, svd="subspace")
        S, U, V = start.sparse, start.U, start.V
    else:
        S, U, V = torch.zeros_like(W), W.new_zeros(W.shape[0], r), W.new_zeros(r, W.shape[1])
    f = objective(W, S, U, V, R)
    history = [f]
    solver = TruncatedSVD(r, svd) if r else None
    for _ in range(alternations):
        if budget.nnz:  # SparseGPT keeps budget.nnz (layer-wise) or the N:M pattern
            S_new = sparsegpt_prune(W - U @ V, H, budget, blocksize, damping)
            f_new = objective(W, S_new, U, V, R)
            if f_new < f:
                S, f = S_new, f_new
        U_new, V_new, f_lr = weighted_lowrank(W - S, R, r, solver)
        if f_lr <= f:  # always, for the exact L-step; an approximate (subspace) one is kept only if no worse
            U, V, f = U_new, V_new, f_lr
        history.append(f)
    return Reconstruction(S, U, V, history)


@register
@dataclass
class Hassle(Method):
    """Reconstruction-aware sparse + low rank at OATS's budget (see the module docstring)."""

    name: ClassVar[str] = "hassle"
    needs: ClassVar[tuple[str, ...]] = ("second_moment", "hessian")
    granularity: ClassVar[str] = "layer"
    rank_ratio: float = 0.1  # type: ignore[misc]
    alternations: int = 10
    damping: float = 0.01
    init: str = "oats"
    svd: str = "subspace"

    def __post_init__(self) -> None:
        check_rank_ratio(self.rank_ratio)
        check_param(self.name, "alternations", self.alternations,
                    isinstance(self.alternations, int) and self.alternations >= 1, "must be an integer >= 1")
        check_param(self.name, "damping", self.damping,
                    isinstance(self.damping, (int, float)) and self.damping > 0, "must be a number > 0")
        check_param(self.name, "init", self.init, self.init in INITS, f"allowed: {', '.join(INITS)}")
        check_param(self.name, "svd", self.svd, self.svd in SVD_SOLVERS, f"allowed: {', '.join(SVD_SOLVERS)}")

    def budget(self, d_out, d_in, compression, nm):
        return layer_budget(d_out, d_in, compression, self.rank_ratio, nm, "layer")

    def compress(self, W, stats, budget, name="layer"):
        d = stats.column_rms(name) if self.init == "oats" else None
        return reconstruct(W, stats.hessian_matrix(name), budget, self.alternations, self.damping, self.init, d,
                           svd=self.svd)
