"""The task interface (see :mod:`oats.tasks`)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..evaluations import EvalContext, check_eval, evaluate, positive_int


class Task:
    """Base of the tasks: :meth:`check` (before any work), :meth:`load`, :meth:`calibrate`, :meth:`evaluate`."""

    kind: str = ""

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Every value of the run's data and eval configs this task reads; errors name the key."""
        data = cfg.get("data") or {}
        positive_int("data.nsamples", data.get("nsamples"))
        self.check_data(data)
        check_eval(cfg.get("eval"), self.kind)

    def check_data(self, data: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def load(self, mcfg: Mapping[str, Any]) -> tuple[nn.Module, Any]:
        """(model in eval mode on the host, processor)."""
        raise NotImplementedError

    def calibrate(self, processor: Any, dcfg: Mapping[str, Any], data_root: str | None,
                  mcfg: Mapping[str, Any]) -> torch.Tensor:
        """The calibration tensor the driver captures activations from (``mcfg``: the model config)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, processor: Any, ecfg: Mapping[str, Any] | None,
                 ctx: EvalContext) -> list[dict]:
        return evaluate(model, processor, ecfg, ctx)
