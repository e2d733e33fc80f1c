"""A run's config, validated once, in one place, into a typed object.

:meth:`RunConfig.parse` checks everything that needs no model or data (device, runtime, model
kind and dtype, the task's data and eval settings, the method and its parameters, the budget, OWL)
and raises a ValueError naming the key and what is allowed. The table planner, the pipeline and
the CLI all call it; the driver then only checks what depends on the model (each layer's budget).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from . import runtime
from .allocation import OWLConfig, check_owl
from .budget import NM, check_compression, parse_nm
from .capture import resolve_device
from .evaluations import check_choice, positive_int
from .hydra_configs import DENSE
from .models.loading import DTYPES
from .registry import Method, get_method
from .tasks import Task, get_task


def build_method(mcfg: Mapping[str, Any]) -> Method | None:
    """The method a ``method`` config names, with its parameters (None for the dense reference)."""
    if mcfg["name"] == DENSE:
        return None
    return get_method(mcfg["name"], **{k: v for k, v in dict(mcfg).items() if k != "name"})


@dataclass(frozen=True)
class RunConfig:
    """One run. ``raw``: the plain config it was parsed from (written to result.json)."""

    raw: dict
    task: Task
    method: Method | None
    compression: float | None
    nm: NM | None
    owl: OWLConfig | None
    device: torch.device
    runtime: dict

    @classmethod
    def parse(cls, cfg: Mapping[str, Any]) -> "RunConfig":
        cfg = dict(cfg)
        device = resolve_device(cfg.get("device", "cpu"))
        rt = runtime.settings(cfg.get("runtime"))
        model = cfg["model"]
        check_choice("model.dtype", model.get("dtype", "float32"), tuple(DTYPES))
        check_choice("model.bos_per_window", model.get("bos_per_window", False), (False, True))
        task = get_task(model.get("kind", "text"))
        positive_int("batch_size", cfg.get("batch_size", 1))
        task.check(cfg)
        method = build_method(cfg["method"])
        nm = owl = None
        if method is not None:
            nm = parse_nm(cfg.get("nm"))
            if nm is None:
                check_compression(cfg.get("compression"))
            ocfg = cfg.get("owl") or {}
            if ocfg.get("enabled"):
                owl = OWLConfig(**{k: v for k, v in ocfg.items() if k != "enabled"})
                check_owl(cfg.get("compression"), owl)
        return cls(cfg, task, method, cfg.get("compression"), nm, owl, device, rt)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)
