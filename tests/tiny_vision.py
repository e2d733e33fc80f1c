"""Tiny randomly initialised vision encoders (transformers ViT, DINOv2 with a linear head, timm ViT) for tests."""
from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Config, Dinov2ForImageClassification, ViTConfig, ViTForImageClassification

SIZE, PATCH, LABELS = 32, 8, 5  # 16 patches + CLS = 17 tokens
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               image_size=SIZE, patch_size=PATCH, num_labels=LABELS)


def tiny_vit(layers: int = 2) -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**{**_COMMON, "num_hidden_layers": layers})).eval()


def tiny_dinov2(layers: int = 2) -> Dinov2ForImageClassification:
    torch.manual_seed(0)
    return Dinov2ForImageClassification(Dinov2Config(**{**_COMMON, "num_hidden_layers": layers})).eval()


def tiny_timm_vit(layers: int = 2):
    """A timm VisionTransformer of the same size; skips the test when timm cannot be imported."""
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision underneath
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc}); "
                    "it is the optional extra `pip install -e '.[vision]'` and needs a torchvision matching torch")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=PATCH,
                             embed_dim=32, depth=layers, num_heads=4, mlp_ratio=2.0, num_classes=LABELS).eval()


TINY_VISION = {"vit": tiny_vit, "dinov2": tiny_dinov2, "timm": tiny_timm_vit}


def calib_images(n: int = 4, seed: int = 0, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, SIZE, SIZE, generator=g)


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out
