"""The vision parts of one run (:func:`oats.pipeline.run` calls these for ``model.kind: vision``).

Config keys read here:

* ``model``: ``name`` (see :func:`~oats.vision.models.load_vision_model`), ``dtype``, optional ``image_size``.
* ``data`` (calibration, ``kind: images``): ``source`` (ImageFolder path, ``fashion-mnist:train``,
  ``fashion-mnist-subset:calib``), ``nsamples``, ``seed``.
* ``eval.images``: ``task`` (metric prefix, e.g. imagenet), ``source``, ``batch_size``, ``limit``, ``workers``.
* ``eval.rollout``: ``source``, ``images`` (how many), ``discard_ratio``, ``head_fusion``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .data import ImageSpec, calibration_images, open_images


def load(mcfg: Mapping[str, Any]) -> tuple[nn.Module, ImageSpec]:
    from .models import load_vision_model

    return load_vision_model(mcfg["name"], dtype=mcfg.get("dtype", "float32"), image_size=mcfg.get("image_size"))


def calibration(spec: ImageSpec, dcfg: Mapping[str, Any], root=None) -> torch.Tensor:
    """(nsamples, C, H, W) preprocessed calibration images drawn with ``data.seed``."""
    return calibration_images(open_images(dcfg["source"], root), dcfg["nsamples"], spec, dcfg.get("seed") or 0)


def check_config(cfg: Mapping[str, Any]) -> None:
    """Value checks that need no model or data; errors name the key."""
    from ..pipeline import ConfigError, _positive_int

    data = cfg.get("data") or {}
    if data.get("kind") != "images":
        raise ConfigError(f"data.kind={data.get('kind')!r}: a vision model (model.kind=vision) calibrates on "
                          "images; use a data config with kind: images (data=imagenet, data=fmnist)")
    _positive_int("data.nsamples", data.get("nsamples"))
    ecfg = cfg.get("eval") or {}
    if ecfg.get("perplexity") or ecfg.get("lm_eval"):
        raise ConfigError("eval.perplexity / eval.lm_eval are for language models; a vision model takes "
                          "eval.images and eval.rollout (eval=imagenet, eval=fmnist, eval=rollout)")
    images = ecfg.get("images")
    if images:
        _positive_int("eval.images.batch_size", images.get("batch_size", 64))
        _positive_int("eval.images.limit", images.get("limit"), allow_none=True)
    ro = ecfg.get("rollout")
    if ro:
        _positive_int("eval.rollout.images", ro.get("images", 4))
        ratio = ro.get("discard_ratio", 0.4)
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ConfigError(f"eval.rollout.discard_ratio={ratio!r} must be in [0, 1)")
        from .rollout import HEAD_FUSIONS

        if ro.get("head_fusion", "mean") not in HEAD_FUSIONS:
            raise ConfigError(f"eval.rollout.head_fusion={ro.get('head_fusion')!r}; allowed: {', '.join(HEAD_FUSIONS)}")


def evaluate(model: nn.Module, spec: ImageSpec, ecfg: Mapping[str, Any] | None, device, root=None,
             out_dir: str | Path | None = None, progress: bool = True, title: str = "") -> list[dict]:
    """Accuracy records (``<task>/top1``, ``<task>/top5``) and rollout records, figure written to ``out_dir``."""
    if not ecfg:
        return []
    records: list[dict] = []
    images = ecfg.get("images")
    if images:
        from .evaluate import image_accuracy

        records += image_accuracy(model, open_images(images["source"], root), spec, task=images.get("task", "images"),
                                  batch_size=images.get("batch_size", 64), limit=images.get("limit"),
                                  workers=images.get("workers", 0), device=device, progress=progress)
    ro = ecfg.get("rollout")
    if ro and out_dir is not None:
        records += run_rollout(model, spec, ro, Path(out_dir), root, title)
    return records


def run_rollout(model: nn.Module, spec: ImageSpec, ro: Mapping[str, Any], out_dir: Path, root=None,
                title: str = "") -> list[dict]:
    """Three-way rollout on the first ``ro.images`` images of ``ro.source``; writes ``rollout.png``."""
    from ..layers import CompressedLinear
    from .rollout import map_correlations, rollout_figure, rollout_maps, rollout_three_ways

    data = open_images(ro["source"], root)
    n = min(ro.get("images", 4), len(data))
    x = torch.stack([spec(data[i][0]) for i in range(n)])
    classes = (getattr(getattr(model, "config", None), "id2label", None) or {})
    labels = [str(classes.get(data[i][1], data[i][1])) for i in range(n)]
    ratio, fusion = ro.get("discard_ratio", 0.4), ro.get("head_fusion", "mean")
    compressed = any(isinstance(m, CompressedLinear) for m in model.modules())
    # a dense model has one map; a compressed one three (full, sparse term only, low-rank term only)
    maps = rollout_three_ways(model, x, ratio, fusion) if compressed else {"full": rollout_maps(model, x, ratio, fusion)}
    path = rollout_figure(x, maps, out_dir / "rollout.png", spec.mean, spec.std, labels,
                          title=f"{title} attention rollout (heads {fusion}, discard ratio {ratio})".strip())
    torch.save(maps, out_dir / "rollout_maps.pt")
    corr = map_correlations(maps) if compressed else {}
    return [{"task": "rollout", "metric": k, "value": v, "figure": str(path)} for k, v in corr.items()]
