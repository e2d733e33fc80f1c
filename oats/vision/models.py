"""Load an image classifier and its preprocessing: transformers ViT / DINOv2, timm, or the project's Fashion-MNIST ViT.

    model, spec = load_vision_model("fmnist-vit")                                   # committed, offline
    model, spec = load_vision_model("google/vit-base-patch16-224")                  # hub (or HF cache)
    model, spec = load_vision_model("facebook/dinov2-base-imagenet1k-1-layer")      # hub, linear head
    model, spec = load_vision_model("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k")  # timm (extra)
    model, spec = load_vision_model("/models/my-vit")                               # folder with config.json

``spec`` (:class:`~oats.vision.data.ImageSpec`) is the paper's preprocessing for that model:
resize to its input size (no centre crop) and its own normalisation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..models.base import DTYPE_KWARG, ModelNotAvailableError, hub_or_cache, resolve_dtype
from .data import ImageSpec, read_processor_config

REPO = Path(__file__).resolve().parents[2]
BUILTIN_VISION = {  # name -> committed model folder
    "fmnist-vit": REPO / "results" / "models" / "fmnist-vit",
}
TIMM_PREFIX = "timm:"


def _from_transformers(source: str, dtype: torch.dtype, image_size, **kwargs) -> tuple[nn.Module, ImageSpec]:
    from transformers import AutoModelForImageClassification
    from transformers.utils import cached_file

    model = AutoModelForImageClassification.from_pretrained(source, **{DTYPE_KWARG: dtype}, **kwargs)
    if Path(source).is_dir():
        proc = read_processor_config(source)
    else:
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **kwargs)
        proc = json.loads(Path(path).read_text()) if path else {}
    channels = getattr(model.config, "num_channels", 3)
    spec = ImageSpec.from_processor_config(proc, channels, getattr(model.config, "image_size", None), image_size)
    return model, spec


def _from_timm(name: str, image_size) -> tuple[nn.Module, ImageSpec]:
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchvision that does not fit this torch
        raise ModelNotAvailableError(
            f"model {TIMM_PREFIX}{name} needs timm, which cannot be imported here ({type(exc).__name__}: {exc}); "
            "install the extra `pip install -e '.[vision]'` with a torchvision built for this torch"
        ) from None
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - unknown name, or weights not downloadable offline
        raise ModelNotAvailableError(f"timm could not create {name!r} with pretrained weights: "
                                     f"{type(exc).__name__}: {exc}") from None
    return model, timm_spec(model, image_size)


def timm_spec(model: nn.Module, image_size: int | Sequence[int] | None = None) -> ImageSpec:
    """Preprocessing from timm's ``pretrained_cfg`` (input_size, mean, std, interpolation); resize, no crop."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, h, w = cfg.get("input_size", (3, 224, 224))
    size = image_size or (h, w)
    return ImageSpec((size, size) if isinstance(size, int) else tuple(size), tuple(cfg.get("mean", (0.5,) * channels)),
                     tuple(cfg.get("std", (0.5,) * channels)), channels, cfg.get("interpolation", "bicubic"))


def load_vision_model(name_or_path: str | os.PathLike[str], dtype: str | torch.dtype = "float32",
                      image_size: int | Sequence[int] | None = None) -> tuple[nn.Module, ImageSpec]:
    """An image classifier in eval mode on CPU, and its preprocessing.

    Raises:
        ModelNotAvailableError: not a built-in, folder, timm name or reachable/cached hub id.
    """
    torch_dtype = resolve_dtype(dtype)
    name = os.fspath(name_or_path)
    if name.startswith(TIMM_PREFIX):
        model, spec = _from_timm(name[len(TIMM_PREFIX):], image_size)
        model = model.to(torch_dtype)
    else:
        path = BUILTIN_VISION.get(name, Path(name).expanduser())
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotAvailableError(f"{path} is a folder but holds no config.json (not a model folder)")
            model, spec = _from_transformers(str(path), torch_dtype, image_size)
        elif name.startswith(("/", "./", "../", "~")) or name in BUILTIN_VISION:
            raise ModelNotAvailableError(f"no such vision model folder: {path}")
        else:
            with hub_or_cache(
                f"vision model {name!r}",
                f"Use 'fmnist-vit', a model folder, '{TIMM_PREFIX}<name>' with timm, or a hub id with network access.",
                checked=f"it is no built-in ({', '.join(BUILTIN_VISION)}) and no folder",
            ) as local_only:
                model, spec = _from_transformers(name, torch_dtype, image_size, local_files_only=local_only)
    model.eval()
    return model, spec


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits (batch, classes) of a transformers classifier (``.logits``) or a timm model (a tensor)."""
    out = model(x)  # both take the pixel values as the first positional argument
    return out.logits if hasattr(out, "logits") else out
