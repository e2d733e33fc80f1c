"""Calibration statistics of a linear layer's inputs, accumulated in fp32 without storing activations."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

STATISTICS = ("second_moment", "hessian")


class StatisticsError(ValueError):
    """Calibration statistics that cannot be used (NaN, infinite, empty)."""


@dataclass
class InputStats:
    """Running statistics of the inputs ``x`` (rows of shape (d_in,)) seen by one layer.

    ``sq_sum``: (d_in,) sum over tokens of x_j^2 (always kept).
    ``xtx``: (d_in, d_in) sum over tokens of x x^T (only when the Hessian is needed).
    """

    d_in: int
    hessian: bool = False
    device: torch.device | str = "cpu"
    n: int = 0
    sq_sum: torch.Tensor = field(init=False)
    xtx: torch.Tensor | None = field(init=False)

    def __post_init__(self) -> None:
        self.sq_sum = torch.zeros(self.d_in, dtype=torch.float32, device=self.device)
        self.xtx = (
            torch.zeros(self.d_in, self.d_in, dtype=torch.float32, device=self.device) if self.hessian else None
        )

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs x: (..., d_in)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(device=self.sq_sum.device, dtype=torch.float32)
        self.n += x.shape[0]
        self.sq_sum += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def _require(self, name: str) -> None:
        if self.n == 0:
            raise StatisticsError(f"{name}: no calibration tokens were seen")
        for label, t in (("second moment", self.sq_sum), ("Hessian", self.xtx)):
            if t is not None and not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise StatisticsError(
                    f"{name}: calibration {label} has {bad} NaN/infinite entries; "
                    "check the model dtype (fp16 overflow?) and the calibration data"
                )

    def column_rms(self, name: str = "layer") -> torch.Tensor:
        """D = sqrt(mean over tokens of x_j^2): (d_in,), fp32. Zero for never-active columns."""
        self._require(name)
        return (self.sq_sum / self.n).sqrt()

    def hessian_matrix(self, name: str = "layer") -> torch.Tensor:
        """SparseGPT's H = (2/n) sum x x^T: (d_in, d_in), fp32."""
        if self.xtx is None:
            raise StatisticsError(f"{name}: the Hessian was not collected for this method")
        self._require(name)
        return self.xtx * (2.0 / self.n)

    def dead_columns(self) -> int:
        """Input columns whose calibration second moment is exactly zero."""
        return int((self.sq_sum == 0).sum())
