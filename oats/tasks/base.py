"""The task interface (see :mod:`oats.tasks`)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..evaluations import ConfigError, EvalContext, check_eval, evaluate, positive_int, requested


class Task:
    """Base of the tasks: :meth:`check` (before any work), :meth:`load`, :meth:`calibrate`, :meth:`evaluate`."""

    kind: str = ""
    loads: tuple[str, ...] = ("eager",)  # the ways this task's models load (the run's ``load``)

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Every value of the run's data, eval and load settings this task reads; errors name the key."""
        data = cfg.get("data") or {}
        positive_int("data.nsamples", data.get("nsamples"))
        self.check_data(data)
        check_eval(cfg.get("eval"), self.kind)
        load = cfg.get("load", "eager")
        if load not in self.loads:
            raise ConfigError(f"load={load!r}: a {self.kind} model loads one of: {', '.join(self.loads)}")
        if load == "stream":  # the model is never whole in memory: its checkpoint is the output
            if not cfg.get("checkpoint", True) or cfg.get("save_model", False):
                raise ConfigError("load=stream writes each compressed block to the run's checkpoint folder, which "
                                  "is the compressed model: keep checkpoint=true and leave save_model=false")
            whole = sorted(set(requested(cfg.get("eval"))) - {"perplexity"})
            if whole:
                raise ConfigError(f"load=stream evaluates perplexity block by block; eval.{whole[0]} needs the "
                                  "whole model in memory: drop it or use load=lazy")

    def check_data(self, data: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def load(self, mcfg: Mapping[str, Any], load: str = "eager") -> tuple[nn.Module, Any]:
        """(model in eval mode on the host, processor); ``load``: one of :attr:`loads`."""
        raise NotImplementedError

    def calibrate(self, processor: Any, dcfg: Mapping[str, Any], data_root: str | None,
                  mcfg: Mapping[str, Any]) -> torch.Tensor:
        """The calibration tensor the driver captures activations from (``mcfg``: the model config)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, processor: Any, ecfg: Mapping[str, Any] | None,
                 ctx: EvalContext) -> list[dict]:
        return evaluate(model, processor, ecfg, ctx)
