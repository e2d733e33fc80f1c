"""Allocation: how much of each block to compress, around a target. OWL (Yin et al. 2024) is one.

An allocation is not a pruner: it gives per-block compressions that any method then meets.
OWL makes a pass over the *dense* model, scores every weight of each block with a pluggable score
(Wanda's ``|W| * D`` by default, as in the paper; any registered method with a ``score`` method,
e.g. ``magnitude``), and gives blocks with more outliers less compression.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .capture import block_on, capture_inputs, run_block
from .models.adapters import get_adapter, text_config
from .registry import method_class
from .stats import collect_stats

DEFAULT_SCORE = "wanda"


@dataclass(frozen=True)
class OWLConfig:
    """OWL allocation: outliers are scores > hyper_m x mean; block sparsities spread over [t - lam, t + lam].

    ``score``: the registered method whose ``score(W, stats, name)`` rates each weight (default wanda).
    """

    hyper_m: float = 3.0
    lam: float = 0.08
    score: str = DEFAULT_SCORE

    def __post_init__(self) -> None:
        if not isinstance(self.hyper_m, (int, float)) or self.hyper_m <= 0:
            raise ValueError(f"owl.hyper_m={self.hyper_m!r} must be a positive number")
        if not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ValueError(f"OWL lambda={self.lam} must be >= 0")
        scorer = method_class(self.score)
        if not callable(getattr(scorer, "score", None)):
            raise ValueError(f"owl.score={self.score!r} is a method without a per-weight score; "
                             f"use one of: {', '.join(scoring_methods())}")

    def describe(self) -> dict:
        """Its settings (the default score is left out, so earlier runs keep their identity)."""
        out: dict = {"hyper_m": self.hyper_m, "lam": self.lam}
        if self.score != DEFAULT_SCORE:
            out["score"] = self.score
        return out


def scoring_methods() -> list[str]:
    from .registry import discover

    return sorted(n for n, cls in discover().items() if callable(getattr(cls, "score", None)))


def outlier_ratio(scores: list[torch.Tensor], hyper_m: float = 3.0) -> float:
    """Fraction of the block's scores above ``hyper_m`` x their mean.

    scores: the score matrices of every linear layer in one block (any shapes).
    """
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    return float((flat > hyper_m * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float] | torch.Tensor, target: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsity from per-block outlier ratios.

    The ratios are mapped linearly to [0, 2*lam]; each block's sparsity is
    ``target - (mapped - mean(mapped))``, so blocks with more outliers are
    pruned less and the mean sparsity stays ``target``.
    """
    if not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
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


def check_owl(target: float | None, owl: OWLConfig) -> None:
    """Fail before any work when OWL cannot give valid sparsities around ``target`` (the extreme case)."""
    owl_sparsities([0.0, 1.0], target, owl.lam)


@torch.no_grad()
def owl_allocation(model: nn.Module, calib: torch.Tensor, target: float, owl: OWLConfig,
                   device: torch.device, batch_size: int = 1, offload_activations: bool = False,
                   progress: bool = True) -> list[float]:
    """OWL per-block sparsity from a pass over the *dense* model (``owl.score`` of every linear)."""
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    scorer = method_class(owl.score)()
    keep_on = torch.device("cpu") if offload_activations else device
    inps, kwargs = capture_inputs(model, blocks, calib, device, keep_on)
    ratios = []
    for i in tqdm(range(len(blocks)), desc="OWL outlier pass", disable=not progress):
        with block_on(model, i, blocks[i], device) as block:
            units = adapter.units(block, text_config(model))
            stats = collect_stats(block, units, inps, kwargs[i], device, batch_size,
                                  scorer.needs or ("second_moment",))
            scores = [scorer.score(block.get_submodule(u.path).weight, stats[u.path], u.path) for u in units]
            ratios.append(outlier_ratio(scores, owl.hyper_m))
            run_block(block, inps, kwargs[i], device, batch_size, out=inps)
    return owl_sparsities(ratios, target, owl.lam)
