"""Architecture adapters: where the transformer blocks are and how to split fused projections.

Everything else in the driver is architecture-agnostic. Adding an architecture
is one entry in :data:`ADAPTERS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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


@dataclass(frozen=True)
class Adapter:
    name: str
    model_types: tuple[str, ...]
    block_paths: tuple[str, ...] = ("model.layers",)
    splits: dict[str, SplitRule] = field(default_factory=dict)  # linear name (last path part) -> rule

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        for path in self.block_paths:
            try:
                blocks = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(blocks, nn.ModuleList) and len(blocks):
                return blocks
        raise UnsupportedArchitectureError(
            f"{self.name} adapter: no transformer blocks at {', '.join(self.block_paths)} in {type(model).__name__}"
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


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama",)),
    # Fused qkv_proj is split into Q, K, V; fused gate_up_proj is compressed as one matrix.
    Adapter("phi3", ("phi3",), splits={"qkv_proj": _phi3_qkv}),
    Adapter("gemma3", ("gemma3_text", "gemma3"),
            block_paths=("model.layers", "model.language_model.layers", "language_model.model.layers")),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def get_adapter(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture model_type={model_type!r} ({type(model).__name__}); "
        f"supported: {', '.join(supported_model_types())}"
    )


def text_config(model: nn.Module):
    """The config holding the decoder's sizes (Gemma-3 multimodal keeps it in text_config)."""
    config = model.config
    return getattr(config, "text_config", None) or config
