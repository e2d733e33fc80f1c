"""The seeded tiny random Llama, ``tiny-random-llama``: built once into the cache, for seconds-long runs."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data.paths import cache_dir as cache_root
from ..io import atomic_folder
from .builtin import resolve_builtin
from .gguf_cache import cached_gguf_folder

__all__ = ["TINY_RANDOM", "tiny_random_llama"]

TINY_RANDOM = "tiny-random-llama"


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def tiny_random_llama(cache_dir: str | Path | None = None) -> Path:
    """A seeded, randomly initialised 2-block Llama (hidden 64) with the SmolLM2 tokenizer, built once.

    For seconds-long end-to-end runs (the ``smoke`` table); its numbers mean nothing.
    Returns its model folder, ``<cache dir>/builtin/tiny-random-llama-v2``; building
    it needs the built-in ``smollm2-135m`` (for the tokenizer).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    target = cache_root(cache_dir) / "builtin" / f"{TINY_RANDOM}-v2"
    if _is_model_folder(target):
        return target
    smollm2 = cached_gguf_folder(resolve_builtin("smollm2-135m", cache_dir), cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    # Weights drawn in float64 (the same on every CPU; float32 normal_ rounds differently per ISA), then cast.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, dtype=torch.float64, generator=gen) * config.initializer_range)
    with atomic_folder(target, complete=_is_model_folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
