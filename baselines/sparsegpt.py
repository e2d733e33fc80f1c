"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with blockwise error propagation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from oats.budget import LayerBudget
from oats.registry import Factors, Method, check_param, register


class HessianError(RuntimeError):
    """The damped Hessian could not be factorised."""


def inverse_cholesky(H: torch.Tensor, percdamp: float, max_tries: int = 6) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp I)^-1, raising damping x10 if H is not positive definite."""
    mean_diag = torch.mean(torch.diag(H))
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    damp_frac = percdamp
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(H + damp_frac * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U, damp_frac
        damp_frac *= 10
    raise HessianError(f"Hessian is not positive definite even with damping {damp_frac / 10:g} x mean(diag H)")


def _keep_per_block(budget: LayerBudget, d_in: int, blocksize: int) -> list[int]:
    """Nonzeros kept in each column block so that the blocks add up to budget.nnz exactly."""
    bounds = list(range(0, d_in, blocksize)) + [d_in]
    cum = [round(budget.nnz * b / d_in) for b in bounds]
    return [cum[i + 1] - cum[i] for i in range(len(bounds) - 1)]


@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    budget: LayerBudget,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """W: (d_out, d_in), H: (d_in, d_in) = (2/n) X^T X -> pruned and updated W_hat (d_out, d_in), fp32.

    Unstructured: within each block of ``blocksize`` columns the mask keeps the
    block's share of ``budget.nnz`` by the score w^2 / diag(H^-1)^2 over all
    rows. N:M: every M columns, keep the N highest scores per row. After each
    column, the OBS update spreads the pruning error over later columns.
    """
    if blocksize < 1:
        raise ValueError(f"blocksize={blocksize} must be >= 1")
    if not 0 <= percdamp:
        raise ValueError(f"percdamp={percdamp} must be >= 0")
    nm = budget.nm
    if nm is not None and blocksize % nm.m:
        blocksize = (blocksize // nm.m or 1) * nm.m
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    d_out, d_in = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv, _ = inverse_cholesky(H, percdamp)
    keep = _keep_per_block(budget, d_in, blocksize) if nm is None else None

    for bi, i1 in enumerate(range(0, d_in, blocksize)):
        i2 = min(i1 + blocksize, d_in)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag1 = torch.diag(Hinv1)
        pruned = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            n_prune = W1.numel() - keep[bi]
            if n_prune > 0:
                score = (W1.square() / diag1.square()).flatten()
                pruned.view(-1)[torch.topk(score, n_prune, largest=False, sorted=False).indices] = True
        for i in range(count):
            w = W1[:, i]
            if nm is not None and i % nm.m == 0:
                score = W1[:, i:i + nm.m].square() / diag1[i:i + nm.m].square()
                idx = torch.topk(score, nm.m - nm.n, dim=1, largest=False, sorted=False).indices
                pruned[:, i:i + nm.m].scatter_(1, idx, True)
            q = w.clone()
            q[pruned[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


@register
@dataclass
class SparseGPT(Method):
    name: ClassVar[str] = "sparsegpt"
    needs: ClassVar[tuple[str, ...]] = ("second_moment", "hessian")
    granularity: ClassVar[str] = "layer"
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        check_param(self.name, "blocksize", self.blocksize, isinstance(self.blocksize, int) and self.blocksize >= 1,
                    "must be a positive integer")
        check_param(self.name, "percdamp", self.percdamp,
                    isinstance(self.percdamp, (int, float)) and self.percdamp >= 0, "must be a number >= 0")

    def compress(self, W, stats, budget, name="layer"):
        return Factors(sparsegpt_prune(W, stats.hessian_matrix(name), budget, self.blocksize, self.percdamp))
