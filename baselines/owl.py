"""OWL (Yin et al. 2024): outlier-weighted per-block sparsity, an allocation any pruner can use."""
from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], hyper_m: float = 3.0) -> float:
    """Fraction of the block's Wanda scores above ``hyper_m`` x their mean.

    scores: the |W| * ||X|| matrices of every linear layer in one block (any shapes).
    """
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    return float((flat > hyper_m * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float] | torch.Tensor, target: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsity from per-block outlier ratios.

    The ratios are mapped linearly to [0, 2*lam]; each block's sparsity is
    ``target - (mapped - mean(mapped))``, so blocks with more outliers are
    pruned less and the mean sparsity stays ``target``.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"OWL target sparsity {target} is outside (0, 1)")
    if not 0.0 <= lam:
        raise ValueError(f"OWL lambda={lam} must be >= 0")
    r = torch.as_tensor(ratios, dtype=torch.float64)
    if r.numel() == 0:
        return []
    span = r.max() - r.min()
    mapped = (r - r.min()) / span * (2 * lam) if span > 0 else torch.zeros_like(r)
    sparsity = target - (mapped - mapped.mean())
    lo, hi = float(sparsity.min()), float(sparsity.max())
    if lo <= 0.0 or hi >= 1.0:
        raise ValueError(
            f"OWL with target {target} and lambda {lam} gives block sparsities in [{lo:.3f}, {hi:.3f}], "
            "outside (0, 1); lower lambda"
        )
    return [float(x) for x in sparsity]
