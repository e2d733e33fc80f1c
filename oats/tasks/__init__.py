"""One task interface, chosen once by ``model.kind``: what kind of model a run compresses.

A task checks its data config, loads the model and its *processor* (a tokenizer for text, the image
preprocessing :class:`~oats.vision.data.ImageSpec` for vision), draws the calibration tensor, and
evaluates through the evaluation registry (:mod:`oats.evaluations`), which knows which evaluations
serve which kind.
"""
from __future__ import annotations

from ..evaluations import ConfigError
from .base import Task
from .text import TextTask
from .vision import VisionTask

TASKS: dict[str, Task] = {t.kind: t for t in (TextTask(), VisionTask())}


def get_task(kind: str) -> Task:
    """The task of ``model.kind`` (text or vision)."""
    if kind not in TASKS:
        raise ConfigError(f"model.kind={kind!r}; allowed: {', '.join(TASKS)}")
    return TASKS[kind]
