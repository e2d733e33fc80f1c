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

So f never increases. With ``match="dense"`` the driver hands the method each whole block with the dense
model's inputs to it (the block-level hook), and every layer fits the *dense* model's layer output from
the compressed model's layer input, ``min ||X_c W_hat^T - X_d W^T||``: that is the problem above for the
target weight ``W C^T H_d^-1`` (C = X_c^T X_d), so the errors of earlier blocks are compensated rather
than carried on. ``init``: "oats" (default: start from OATS's decomposition at the same budget,
20 subspace iterations) or "zero" (L = 0: the first S-step is plain SparseGPT; the greedy S-step then
tends to stall once L has settled, tests/test_methods.py).

``sparse_fallback`` (off by default): on an unstructured budget, also prune W alone with the whole
budget (rank 0: SparseGPT) and keep that when its f is lower, so no layer ends worse than SparseGPT's
on the objective. Measured on Gemma-3-270M at 60% (results/bench/layer_errors_gemma3_block9_60.txt),
the low rank's share of the budget costs more than it removes on 4 of 7 layers of a block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from baselines.sparsegpt import HessianError, sparsegpt_prune

from ..budget import LayerBudget, check_rank_ratio, layer_budget
from ..capture import batches, call_block, to_device
from ..registry import Factors, Method, check_param, register
from .oats import SVD_SOLVERS, TruncatedSVD, oats_decompose

INITS = ("zero", "oats")
MATCHES = ("layer", "dense")


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
                blocksize: int = 128, svd: str = "subspace", sparse_fallback: bool = False) -> Reconstruction:
    """Alternate S-steps and exact L-steps; W: (d_out, d_in), H: (d_in, d_in), d: (d_in,) input RMS
    (for init="oats"). ``svd``: the L-step's truncated SVD, "subspace" (warm-started across
    alternations, as OATS's) or "full". ``sparse_fallback``: see the module docstring. Returns the
    factors and f after the initialisation and each alternation (and after the fallback, if tried)."""
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
    if sparse_fallback and r and budget.nm is None:
        alone = LayerBudget(budget.d_out, budget.d_in, 0, budget.params, None, None, "layer")
        S_alone = sparsegpt_prune(W, H, alone, blocksize, damping)
        U0, V0 = W.new_zeros(W.shape[0], 0), W.new_zeros(0, W.shape[1])
        f_alone = objective(W, S_alone, U0, V0, R)
        if f_alone < f:
            S, U, V, f = S_alone, U0, V0, f_alone
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
    match: str = "layer"  # "layer": the layer's own output on the compressed stream; "dense": the dense model's
    sparse_fallback: bool = False  # per layer, SparseGPT at the whole budget where its f is lower (unstructured)
    added_later: ClassVar[tuple[str, ...]] = ("sparse_fallback",)

    @property
    def needs_targets(self) -> bool:  # type: ignore[override]
        return self.match == "dense"

    def __post_init__(self) -> None:
        check_rank_ratio(self.rank_ratio)
        check_param(self.name, "alternations", self.alternations,
                    isinstance(self.alternations, int) and self.alternations >= 1, "must be an integer >= 1")
        check_param(self.name, "damping", self.damping,
                    isinstance(self.damping, (int, float)) and self.damping > 0, "must be a number > 0")
        check_param(self.name, "init", self.init, self.init in INITS, f"allowed: {', '.join(INITS)}")
        check_param(self.name, "svd", self.svd, self.svd in SVD_SOLVERS, f"allowed: {', '.join(SVD_SOLVERS)}")
        check_param(self.name, "match", self.match, self.match in MATCHES, f"allowed: {', '.join(MATCHES)}")
        check_param(self.name, "sparse_fallback", self.sparse_fallback, isinstance(self.sparse_fallback, bool),
                    "must be true or false")

    def budget(self, d_out, d_in, compression, nm):
        return layer_budget(d_out, d_in, compression, self.rank_ratio, nm, "layer")

    def compress(self, W, stats, budget, name="layer"):
        d = stats.column_rms(name) if self.init == "oats" else None
        return reconstruct(W, stats.hessian_matrix(name), budget, self.alternations, self.damping, self.init, d,
                           svd=self.svd, sparse_fallback=self.sparse_fallback)

    def compress_block(self, job) -> None:
        if self.match != "dense":
            return super().compress_block(job)
        cross = cross_statistics(job)
        for unit in job.units:
            lin = job.block.get_submodule(unit.path)
            H, C = job.stats[unit.path].hessian_matrix(unit.path), cross[unit.path]
            target = dense_target(lin.weight.data.float(), H, C, self.damping)
            factors, seconds = {}, {}
            for part, (a, b) in (unit.parts or {"": (0, lin.out_features)}).items():
                t0 = time.perf_counter()
                factors[part] = self.compress(target[a:b], job.stats.get(unit.path), job.budget(unit, (a, b)),
                                              name=f"{unit.path}.{part}" if part else unit.path)
                seconds[part] = time.perf_counter() - t0
            job.replace(unit, factors, seconds)


def dense_target(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor, damping: float) -> torch.Tensor:
    """The weight whose output on the compressed inputs best matches the dense layer's output:
    argmin ||X_c W_t^T - X_d W^T|| = W C^T H_d^-1. W: (d_out, d_in); H = (2/n) X_c^T X_c and
    C = (2/n) X_c^T X_d: (d_in, d_in)."""
    R = damped_cholesky(H, damping)
    return torch.cholesky_solve((C @ W.T), R, upper=True).T


@torch.no_grad()
def cross_statistics(job) -> dict[str, torch.Tensor]:
    """C = (2/n) X_c^T X_d for every linear of the block: its inputs on the compressed stream (X_c) against
    those on the dense stream (X_d), token by token, with the block's (still dense) weights."""
    blk, kw = job.block, to_device(job.kwargs, job.device)
    sums: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}
    handles = [blk.get_submodule(u.path).register_forward_hook(
        lambda m, a, o, p=u.path: seen.__setitem__(p, a[0].reshape(-1, a[0].shape[-1]).float())) for u in job.units]
    n = 0
    try:
        for sl in batches(job.inputs.shape[0], job.batch_size):
            call_block(blk, job.inputs[sl].to(job.device), kw)
            compressed = dict(seen)
            call_block(blk, job.dense_inputs[sl].to(job.device), kw)
            for path, xc in compressed.items():
                acc = sums.setdefault(path, torch.zeros(xc.shape[1], xc.shape[1], device=xc.device))
                acc.addmm_(xc.T, seen[path])
            n += next(iter(compressed.values())).shape[0]
    finally:
        for h in handles:
            h.remove()
    return {p: c * (2.0 / n) for p, c in sums.items()}
