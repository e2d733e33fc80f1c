"""Architecture adapters: where the transformer blocks are, how to split fused projections, and how
to call the model on one calibration item (token ids for decoders, an image for vision encoders).

Everything else in the driver is architecture-agnostic. Adding an architecture
is one entry in :data:`ADAPTERS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class Unit:
    """One nn.Linear of a block to compress.

    ``path``: module path inside the block (e.g. ``self_attn.q_proj``).
    ``parts``: for a fused projection kept as separate matrices, ``{part: (row_start, row_end)}``
    over the weight's output rows; empty for a plain linear.
    """

    path: str
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)


SplitRule = Callable[[nn.Module, object], dict[str, tuple[int, int]]]


def _call_tokens(model: nn.Module, item: torch.Tensor) -> Any:
    """A decoder on one calibration sequence: item (seqlen,) token ids."""
    return model(item.unsqueeze(0), use_cache=False)


def _call_pixels(model: nn.Module, item: torch.Tensor) -> Any:
    """A transformers vision model on one calibration image: item (C, H, W) pixel values."""
    return model(pixel_values=item.unsqueeze(0))


def _call_plain(model: nn.Module, item: torch.Tensor) -> Any:
    """A model whose forward takes the image tensor positionally (timm): item (C, H, W)."""
    return model(item.unsqueeze(0))


INPUT_KINDS = {  # calibration kind -> (what one item is, its dimensions, floating point?)
    "tokens": ("(n, seqlen) tensor of token ids", 2, False),
    "images": ("(n, channels, height, width) tensor of pixel values", 4, True),
}


@dataclass(frozen=True)
class Adapter:
    name: str
    model_types: tuple[str, ...]
    block_paths: tuple[str, ...] = ("model.layers",)
    splits: dict[str, SplitRule] = field(default_factory=dict)  # linear name (last path part) -> rule
    inputs: str = "tokens"  # calibration kind, a key of INPUT_KINDS
    call: Callable[[nn.Module, torch.Tensor], Any] = _call_tokens  # the model on one calibration item

    def check_calibration(self, calib: Any) -> None:
        """Raise ValueError unless ``calib`` is a non-empty batch of this model's calibration items."""
        what, dims, floating = INPUT_KINDS[self.inputs]
        if not (isinstance(calib, torch.Tensor) and calib.dim() == dims and calib.numel() > 0
                and calib.is_floating_point() == floating):
            got = tuple(calib.shape) if isinstance(calib, torch.Tensor) else type(calib).__name__
            dtype = f" {calib.dtype}" if isinstance(calib, torch.Tensor) else ""
            raise ValueError(f"calib for a {self.name} model must be a non-empty {what}, got {got}{dtype}")

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        for path in self.block_paths:
            try:
                blocks = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
                return blocks
        raise UnsupportedArchitectureError(
            f"{self.name} adapter: no transformer blocks (a non-empty ModuleList or Sequential) at any of "
            f"{', '.join(self.block_paths)} in {type(model).__name__}"
        )

    def units(self, block: nn.Module, config: object) -> list[Unit]:
        """Every nn.Linear in the block, in module order, with fused projections split by rule."""
        units = []
        for path, module in block.named_modules():
            if isinstance(module, nn.Linear):
                rule = self.splits.get(path.rsplit(".", 1)[-1])
                units.append(Unit(path, rule(module, config) if rule else {}))
        if not units:
            raise UnsupportedArchitectureError(f"{self.name} adapter: block {type(block).__name__} has no nn.Linear")
        return units


def _phi3_qkv(module: nn.Module, config) -> dict[str, tuple[int, int]]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    if q + 2 * kv != module.out_features:
        raise UnsupportedArchitectureError(
            f"Phi-3 qkv_proj has {module.out_features} outputs, expected q {q} + k {kv} + v {kv}"
        )
    return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}


def _timm_qkv(module: nn.Module, config) -> dict[str, tuple[int, int]]:
    """timm's fused qkv Linear (3 * dim outputs, Q then K then V): split into Q, K, V like transformers' ViT."""
    if module.out_features != 3 * module.in_features:
        raise UnsupportedArchitectureError(
            f"timm attention qkv has {module.out_features} outputs, expected 3 x {module.in_features}"
        )
    d = module.in_features
    return {"q": (0, d), "k": (d, 2 * d), "v": (2 * d, 3 * d)}


TIMM_VIT = "timm_vit"  # model_type given to timm VisionTransformer models (they have no HF config)

ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama",)),
    # Fused qkv_proj is split into Q, K, V; fused gate_up_proj is compressed as one matrix.
    Adapter("phi3", ("phi3",), splits={"qkv_proj": _phi3_qkv}),
    Adapter("gemma3", ("gemma3_text", "gemma3"),
            block_paths=("model.layers", "model.language_model.layers", "language_model.model.layers")),
    # Vision encoders: calibration items are images; the classifier head stays dense.
    # transformers >= 5 keeps ViT blocks at vit.layers, older versions at vit.encoder.layer.
    Adapter("vit", ("vit",), block_paths=("vit.layers", "vit.encoder.layer", "layers", "encoder.layer"),
            inputs="images", call=_call_pixels),
    Adapter("dinov2", ("dinov2",),
            block_paths=("dinov2.encoder.layer", "dinov2.layers", "encoder.layer", "layers"),
            inputs="images", call=_call_pixels),
    # timm VisionTransformer (and relatives with .blocks): fused qkv split into Q, K, V.
    Adapter("timm_vit", (TIMM_VIT,), block_paths=("blocks",), splits={"qkv": _timm_qkv},
            inputs="images", call=_call_plain),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def model_type(model: nn.Module) -> str | None:
    """The config's model_type; timm models (no HF config) are ``timm_vit``."""
    found = getattr(getattr(model, "config", None), "model_type", None)
    return TIMM_VIT if found is None and _is_timm(model) else found


def get_adapter(model: nn.Module) -> Adapter:
    model_type_ = model_type(model)
    for adapter in ADAPTERS:
        if model_type_ in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture model_type={model_type_!r} ({type(model).__name__}); "
        f"supported: {', '.join(supported_model_types())}"
    )


def text_config(model: nn.Module):
    """The config holding the decoder's sizes (Gemma-3 multimodal keeps it in text_config).

    timm models have no config: a stand-in with their model_type, depth and width.
    """
    config = getattr(model, "config", None)
    if config is None and _is_timm(model):
        return SimpleNamespace(model_type=TIMM_VIT, num_hidden_layers=len(getattr(model, "blocks", ())),
                               hidden_size=getattr(model, "embed_dim", None))
    return getattr(config, "text_config", None) or config
