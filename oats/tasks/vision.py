"""Image classifiers (ViT, DINOv2, timm): image calibration, top-1/top-5 and attention rollout evaluations.

Config keys read here: ``model``: ``name`` (see :func:`~oats.vision.models.load_vision_model`), ``dtype``,
optional ``image_size``; ``data`` (``kind: images``): ``source`` (ImageFolder path, ``fashion-mnist:train``,
``fashion-mnist-subset:calib``), ``nsamples``, ``seed``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..evaluations import ConfigError
from .base import Task


class VisionTask(Task):
    kind = "vision"

    def check_data(self, data: Mapping[str, Any]) -> None:
        if data.get("kind") != "images":
            raise ConfigError(f"data.kind={data.get('kind')!r}: a vision model (model.kind=vision) calibrates on "
                              "images; use a data config with kind: images (data=imagenet, data=fmnist)")

    def load(self, mcfg: Mapping[str, Any], load: str = "eager") -> tuple[nn.Module, Any]:
        from ..vision.models import load_vision_model

        return load_vision_model(mcfg["name"], dtype=mcfg.get("dtype", "float32"), image_size=mcfg.get("image_size"))

    def calibrate(self, spec: Any, dcfg: Mapping[str, Any], data_root: str | None,
                  mcfg: Mapping[str, Any]) -> torch.Tensor:
        """(nsamples, C, H, W) preprocessed images drawn with ``data.seed``."""
        from ..vision.data import calibration_images, open_images

        return calibration_images(open_images(dcfg["source"], data_root), dcfg["nsamples"], spec,
                                  dcfg.get("seed") or 0)
