"""Calibration statistics of each linear layer's inputs, accumulated in fp32 without storing activations.

:data:`STATISTICS` is the registry of what can be accumulated; a method names the ones it needs
(``Method.needs``) and :func:`collect_stats` gathers them for every linear of a block in the one
forward pass the driver makes anyway. The second moment is always kept (it reports dead input
columns).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .capture import batches, call_block, to_device
from .models.adapters import Unit


class StatisticsError(ValueError):
    """Calibration statistics that cannot be used (NaN, infinite, empty)."""


@dataclass(frozen=True)
class Statistic:
    """A running sum over calibration inputs.

    ``shape(d_in)``: the accumulator's shape. ``update(acc, x)``: add a batch x (samples, tokens, d_in),
    fp32 (a sample is one calibration sequence or image).
    """

    name: str
    shape: Callable[[int], tuple[int, ...]]
    update: Callable[[torch.Tensor, torch.Tensor], None]
    what: str


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _add_hessian(acc: torch.Tensor, x: torch.Tensor) -> None:
    t = _tokens(x)
    acc.addmm_(t.T, t)


STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic("second_moment", lambda d: (d,), lambda acc, x: acc.add_(_tokens(x).square().sum(0)), "sum of x_j^2"),
    Statistic("hessian", lambda d: (d, d), _add_hessian, "sum of x x^T"),
    Statistic("mean", lambda d: (d,), lambda acc, x: acc.add_(_tokens(x).sum(0)), "sum of x_j"),
    Statistic("variance", lambda d: (d,),
              lambda acc, x: acc.add_((x.var(dim=1, unbiased=False) * x.shape[1]).sum(0)),
              "sum over samples of tokens x (within-sample variance of x_j)"),
)}


def check_statistics(names: tuple[str, ...] | list[str]) -> None:
    unknown = [n for n in names if n not in STATISTICS]
    if unknown:
        raise StatisticsError(f"unknown statistic(s) {unknown}; known: {', '.join(STATISTICS)}")


@dataclass
class LayerStats:
    """Running statistics of the inputs seen by one layer.

    ``sums[name]``: the accumulator of each statistic collected (``second_moment`` always);
    ``n``: tokens seen; ``samples``: calibration samples (sequences, images) seen.
    """

    d_in: int
    needs: tuple[str, ...] = ()
    device: torch.device | str = "cpu"
    n: int = 0
    samples: int = 0
    sums: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        check_statistics(self.needs)
        names = ("second_moment", *(s for s in self.needs if s != "second_moment"))
        self.sums = {s: torch.zeros(STATISTICS[s].shape(self.d_in), dtype=torch.float32, device=self.device)
                     for s in names}

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs x: (samples, tokens, d_in), or (tokens, d_in) for one sample."""
        x = x.detach().to(device=self.sums["second_moment"].device, dtype=torch.float32)
        x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.unsqueeze(0)
        self.n += x.shape[0] * x.shape[1]
        self.samples += x.shape[0]
        for name, acc in self.sums.items():
            STATISTICS[name].update(acc, x)

    def _get(self, stat: str, layer: str) -> torch.Tensor:
        if stat not in self.sums:
            raise StatisticsError(f"{layer}: the {stat} statistic was not collected for this method")
        if self.n == 0:
            raise StatisticsError(f"{layer}: no calibration tokens were seen")
        for label, t in self.sums.items():
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise StatisticsError(f"{layer}: calibration {label} has {bad} NaN/infinite entries; "
                                      "check the model dtype (fp16 overflow?) and the calibration data")
        return self.sums[stat]

    def column_rms(self, name: str = "layer") -> torch.Tensor:
        """D = sqrt(mean over tokens of x_j^2): (d_in,), fp32. Zero for never-active columns."""
        return (self._get("second_moment", name) / self.n).sqrt()

    def hessian_matrix(self, name: str = "layer") -> torch.Tensor:
        """SparseGPT's H = (2/n) sum x x^T: (d_in, d_in), fp32."""
        return self._get("hessian", name) * (2.0 / self.n)

    def column_sum_per_sample(self, name: str = "layer") -> torch.Tensor:
        """sum over tokens of x_j, averaged over samples: (d_in,), fp32 (DSnoT's signed input statistic)."""
        return self._get("mean", name) / self.samples

    def column_variance(self, name: str = "layer") -> torch.Tensor:
        """Variance of x_j within a sample, averaged over samples (token-weighted): (d_in,), fp32."""
        return self._get("variance", name) / self.n

    def dead_columns(self) -> int:
        """Input columns whose calibration second moment is exactly zero."""
        return int((self.sums["second_moment"] == 0).sum())


class _AllInputsSeen(Exception):
    """Raised by the last statistics hook of a forward: nothing after it feeds a statistic."""


@torch.no_grad()
def collect_stats(block: nn.Module, units: list[Unit], inps: torch.Tensor, kw: dict, device: torch.device,
                  batch_size: int, needs: tuple[str, ...]) -> dict[str, LayerStats]:
    """One forward pass of ``block`` over ``inps`` (n, tokens, hidden) accumulating the ``needs``
    statistics of every unit's input; {unit path: LayerStats}. Nothing when ``needs`` is empty.

    The block's output is not needed, so each forward stops once the last hooked input of it has been
    seen: the first batch runs whole and counts the hook calls of one forward, and every later batch
    stops at that count (e.g. a Llama block skips ``down_proj`` and what follows, ~20% of its work).
    Every hooked call still happens, in the same order, so the statistics are the same bit for bit.
    This assumes the block calls its linears the same way for every batch, as the supported (dense)
    architectures do; a mixture-of-experts block, whose calls depend on the routing, would need the
    whole forward.
    """
    if not needs:
        return {}
    stats: dict[str, LayerStats] = {}
    handles = []
    calls = {"seen": 0, "stop_at": None}

    def hook(_module, args, st):
        st.add(args[0])
        calls["seen"] += 1
        if calls["seen"] == calls["stop_at"]:
            raise _AllInputsSeen

    for unit in units:
        lin = block.get_submodule(unit.path)
        st = stats[unit.path] = LayerStats(lin.in_features, tuple(needs), device=device)
        handles.append(lin.register_forward_pre_hook(lambda m, args, st=st: hook(m, args, st)))
    kw = to_device(kw, device)
    try:
        for sl in batches(inps.shape[0], batch_size):
            calls["seen"] = 0
            try:
                call_block(block, inps[sl].to(device), kw)
            except _AllInputsSeen:
                pass
            if calls["stop_at"] is None:
                calls["stop_at"] = calls["seen"]
    finally:
        for h in handles:
            h.remove()
    return stats
