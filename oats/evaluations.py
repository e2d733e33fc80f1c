"""The evaluation registry: each key of a run's ``eval`` config names one evaluation.

An evaluation checks its config section before any work and turns (model, processor, section)
into metric records ``{task, metric, value, ...}``. It serves one task kind (``text`` or
``vision``) or both (``any``). A null section is not run. The heavy libraries (lm-eval, PIL,
matplotlib) load only when an evaluation runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn


class ConfigError(ValueError):
    """A config value out of range, named by its key."""


def positive_int(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer{' or null' if allow_none else ''}")


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class EvalContext:
    """Where an evaluation runs: compute device, offline data root, run folder (figures), progress bars."""

    device: torch.device
    data_root: str | None = None
    out_dir: Path | None = None
    progress: bool = True
    title: str = ""
    bos_per_window: bool = False  # the model wants BOS at the start of every sequence (model.bos_per_window)


@dataclass(frozen=True)
class Evaluation:
    name: str
    kind: str  # "text", "vision" or "any"
    check: Callable[[Mapping[str, Any]], None]
    run: Callable[[nn.Module, Any, Any, EvalContext], list[dict]]


EVALUATIONS: dict[str, Evaluation] = {}


def evaluation(name: str, kind: str, check: Callable[[Any], None] = lambda section: None):
    """Decorator registering ``run(model, processor, section, ctx) -> records`` as evaluation ``name``."""
    def wrap(run):
        EVALUATIONS[name] = Evaluation(name, kind, check, run)
        return run
    return wrap


def requested(ecfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evaluations a run's ``eval`` config asks for (non-null sections), in config order."""
    return {k: v for k, v in (ecfg or {}).items() if v is not None and v != []}


def check_eval(ecfg: Mapping[str, Any] | None, kind: str) -> None:
    """Every requested evaluation is known, serves ``kind`` and has valid settings (errors name the key)."""
    for name, section in requested(ecfg).items():
        ev = EVALUATIONS.get(name)
        served = sorted(n for n, e in EVALUATIONS.items() if e.kind in (kind, "any"))
        if ev is None:
            raise ConfigError(f"eval.{name}: unknown evaluation; known: {', '.join(sorted(EVALUATIONS))}")
        if ev.kind not in (kind, "any"):
            raise ConfigError(f"eval.{name} is a {ev.kind} evaluation; a {kind} model takes: {', '.join(served)}")
        ev.check(section)


def evaluate(model: nn.Module, processor: Any, ecfg: Mapping[str, Any] | None, ctx: EvalContext) -> list[dict]:
    """Run every requested evaluation in config order; their records concatenated."""
    from .models.lazy import disk_weights

    records: list[dict] = []
    weights = disk_weights(model)
    for name, section in requested(ecfg).items():
        if weights is not None and name != "perplexity":  # runs the whole model at once (perplexity goes
            weights.load_all(model)                        # block by block on a model on disk)
        records += EVALUATIONS[name].run(model, processor, section, ctx)
    return records


# ------------------------------------------------------------------ text

def _check_perplexity(section: Mapping[str, Any]) -> None:
    positive_int("eval.perplexity.seqlen", section.get("seqlen"))
    positive_int("eval.perplexity.max_windows", section.get("max_windows"), allow_none=True)
    if not isinstance(section.get("blockwise", False), bool):
        raise ConfigError(f"eval.perplexity.blockwise={section.get('blockwise')!r} must be true or false")


@evaluation("perplexity", "text", _check_perplexity)
def _perplexity(model, tokenizer, section, ctx: EvalContext) -> list[dict]:
    from .eval.perplexity import perplexity
    from .models.lazy import disk_weights

    return [perplexity(model, tokenizer, source=section.get("source", "wikitext2"), seqlen=section["seqlen"],
                       max_windows=section.get("max_windows"), device=str(ctx.device), data_root=ctx.data_root,
                       progress=ctx.progress, bos_per_window=ctx.bos_per_window,
                       blockwise=section.get("blockwise", False) or disk_weights(model) is not None)]


def _check_lm_eval(groups: Any) -> None:
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) and g.get("tasks") for g in groups):
        raise ConfigError(f"eval.lm_eval={groups!r} must be a list of {{tasks: [...], num_fewshot, limit, batch_size}}")
    for g in groups:
        positive_int("eval.lm_eval.batch_size", g.get("batch_size", 1))
        positive_int("eval.lm_eval.limit", g.get("limit"), allow_none=True)


@evaluation("lm_eval", "text", _check_lm_eval)
def _lm_eval(model, tokenizer, groups, ctx: EvalContext) -> list[dict]:
    from .eval.lm_eval_bridge import run_lm_eval

    records: list[dict] = []
    for group in groups:
        records += run_lm_eval(model, tokenizer, list(group["tasks"]), num_fewshot=group.get("num_fewshot"),
                               limit=group.get("limit"), batch_size=group.get("batch_size", 1), device=str(ctx.device),
                               data_root=ctx.data_root, bos_per_window=ctx.bos_per_window)
    return records


@evaluation("speed", "text")
def _speed(model, tokenizer, section, ctx: EvalContext) -> list[dict]:
    """CPU inference speed against the dense equivalent (oats.speed)."""
    from .speed import evaluate_speed

    return evaluate_speed(model, section, ctx.out_dir, progress=ctx.progress)


# ------------------------------------------------------------------ vision

def _check_images(section: Mapping[str, Any]) -> None:
    positive_int("eval.images.batch_size", section.get("batch_size", 64))
    positive_int("eval.images.limit", section.get("limit"), allow_none=True)


@evaluation("images", "vision", _check_images)
def _images(model, spec, section, ctx: EvalContext) -> list[dict]:
    """Top-1 / top-5 accuracy (``<task>/top1``, ``<task>/top5``)."""
    from .vision.data import open_images
    from .vision.evaluate import image_accuracy

    return image_accuracy(model, open_images(section["source"], ctx.data_root), spec,
                          task=section.get("task", "images"), batch_size=section.get("batch_size", 64),
                          limit=section.get("limit"), workers=section.get("workers", 0), device=ctx.device,
                          progress=ctx.progress)


def _check_rollout(section: Mapping[str, Any]) -> None:
    from .vision.rollout import HEAD_FUSIONS

    positive_int("eval.rollout.images", section.get("images", 4))
    ratio = section.get("discard_ratio", 0.4)
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"eval.rollout.discard_ratio={ratio!r} must be in [0, 1)")
    check_choice("eval.rollout.head_fusion", section.get("head_fusion", "mean"), HEAD_FUSIONS)


@evaluation("rollout", "vision", _check_rollout)
def _rollout(model, spec, section, ctx: EvalContext) -> list[dict]:
    """Three-way attention rollout figure in the run folder; correlations between the maps as metrics."""
    if ctx.out_dir is None:
        return []
    from .vision.rollout import run_rollout

    return run_rollout(model, spec, section, ctx.out_dir, ctx.data_root, ctx.title)
