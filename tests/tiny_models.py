"""Tiny randomly initialised decoder models of each supported architecture (for tests)."""
from __future__ import annotations

import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Phi3Config,
                          Phi3ForCausalLM)

VOCAB = 128
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, **IDS)
    return LlamaForCausalLM(cfg).eval()


def tiny_phi3(layers: int = 2) -> Phi3ForCausalLM:
    torch.manual_seed(0)
    cfg = Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, **IDS)
    return Phi3ForCausalLM(cfg).eval()


def tiny_gemma3(layers: int = 2) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, max_position_embeddings=128,
                           sliding_window=8, **IDS,
                           layer_types=(["sliding_attention", "full_attention"] * layers)[:layers])
    return Gemma3ForCausalLM(cfg).eval()


TINY = {"llama": tiny_llama, "phi3": tiny_phi3, "gemma3": tiny_gemma3}


def calib_ids(n: int = 4, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=g)
