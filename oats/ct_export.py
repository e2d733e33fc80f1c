"""A sparse-only compressed model as a ``compressed-tensors`` checkpoint (the ``sparse-bitmask`` format).

:func:`save_compressed_tensors` writes a Hugging Face model folder (``config.json`` with a
``quantization_config`` whose ``sparsity_config`` names the format, tokenizer files if given,
``model.safetensors``) in which every compressed linear's weight is stored as
``<layer path>.{compressed,bitmask,shape,row_offsets}`` (:mod:`oats.sparse_format`: that library's
layout and names; a bias stays ``<layer path>.bias``) and every other tensor densely, so that compressed-tensors (and what reads it: vLLM,
llm-compressor) can decompress it. Only sparse parts fit that format: a layer with low-rank factors
(OATS) is refused by name; :func:`oats.layers.save_compressed` stores those.

compressed-tensors dropped its sparse compressors after 0.12 (0.13+ ignore sparsity configs): read these
folders with ``compressed-tensors<0.13`` (the ``speed`` extra pins 0.12.2).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .io import atomic_folder
from .layers import compressed_linears, iter_compressed
from .sparse_format import BitmaskTensor


def _structure(weights: list[torch.Tensor]) -> str:
    from .speed.export import detect_nm

    nm = {detect_nm(w != 0) for w in weights}
    return nm.pop() if len(nm) == 1 and None not in nm else "unstructured"


def save_compressed_tensors(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write ``model`` (sparse-only compressed linears) to ``folder`` in compressed-tensors' sparse-bitmask
    format, atomically (the folder appears whole or not at all); returns the folder."""
    if Path(folder).exists():
        raise FileExistsError(f"{folder} exists: give a new folder for the compressed-tensors checkpoint")
    compressed = dict(iter_compressed(model))
    if not compressed:
        raise ValueError("the model has no compressed layers: nothing to store in the sparse-bitmask format")
    for name, m in compressed.items():
        ranks = [lin.rank for lin in compressed_linears(m)]
        if any(ranks):
            raise ValueError(f"layer {name!r} has low-rank factors (rank {max(ranks)}): the sparse-bitmask format "
                             "holds sparse weights only; save sparse + low-rank models with oats.save_compressed")
    tensors: dict[str, torch.Tensor] = {}
    kept = total = 0
    sparse_weights = []
    for name, m in compressed.items():
        W = torch.cat([lin.sparse for lin in compressed_linears(m)]).detach().cpu()
        sparse_weights.append(W)
        kept, total = kept + int(torch.count_nonzero(W)), total + W.numel()
        tensors.update(BitmaskTensor.from_dense(W).state_dict(name))  # <layer>.compressed etc., as that library names them
        biases = [lin.bias for lin in compressed_linears(m)]
        if biases[0] is not None:
            tensors[f"{name}.bias"] = torch.cat(biases).detach().cpu()
    inside = tuple(f"{n}." for n in compressed)
    seen: set[int] = set()
    for key, t in model.state_dict().items():
        if key.startswith(inside):
            continue
        if t.device.type == "meta":
            raise ValueError(f"tensor {key} is not in memory (a lazily loaded or streamed model): load the model "
                             "whole (load=eager) to write a compressed-tensors checkpoint")
        if t.data_ptr() in seen:  # tied weights (embeddings / head) are stored once
            continue
        seen.add(t.data_ptr())
        tensors[key] = t.detach().cpu().contiguous()
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "sparsity_config": {"format": "sparse-bitmask", "targets": sorted(compressed), "ignore": [],
                            "global_sparsity": 1 - kept / total, "sparsity_structure": _structure(sparse_weights)}}
    from safetensors.torch import save_file

    with atomic_folder(Path(folder)) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(folder)
