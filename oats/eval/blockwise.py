"""Next-token NLL of whole windows computed block by block, as SparseGPT's and Wanda's evaluation
scripts do for models that do not fit on the device: the activations of every window enter block
0, each block then runs over all of them with only that block on the device, and the final norm
and head turn the last hidden states into logits. Same numbers as the whole-model forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..capture import batches, block_on, capture_inputs, device_of, outside_blocks, resolve_device, run_block
from ..models.adapters import UnsupportedArchitectureError, get_adapter, text_config


def final_norm(model: nn.Module) -> nn.Module:
    """The decoder's final norm: ``norm`` of the module holding the blocks (e.g. ``model.norm``)."""
    adapter = get_adapter(model)
    for path in adapter.block_paths:
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        try:
            blocks = model.get_submodule(path)
            norm = model.get_submodule(f"{parent}.norm" if parent else "norm")
        except AttributeError:
            continue
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            return norm
    raise UnsupportedArchitectureError(
        f"{adapter.name} adapter: no final norm beside the blocks at {', '.join(adapter.block_paths)}; "
        "block-by-block evaluation needs a causal LM with one")


def _logits(model: nn.Module, norm: nn.Module, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = head(norm(hidden)).float()
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def blockwise_window_nll(model: nn.Module, windows: torch.Tensor, device: str | torch.device = "cpu",
                         batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Summed next-token NLL (float64) of each row of ``windows`` (n, seqlen), computed block by block.

    Only one block and the windows' activations (n x seqlen x hidden, kept on the host) are on
    ``device`` at a time; the rest of the model stays where it is.
    """
    adapter = get_adapter(model)
    if adapter.inputs != "tokens":
        raise UnsupportedArchitectureError(f"block-by-block perplexity needs a causal LM, not a {adapter.name} model")
    if model.get_output_embeddings() is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no output embeddings (LM head)")
    device = resolve_device(device)
    blocks = adapter.blocks(model)
    hidden, kwargs = capture_inputs(model, blocks, windows, device, torch.device("cpu"))
    for i in tqdm(range(len(blocks)), desc="ppl blocks", disable=not progress):
        with block_on(model, i, blocks[i], device) as block:
            run_block(block, hidden, kwargs[i], device, batch_size, out=hidden)
    with outside_blocks(model, without=(model.get_input_embeddings(),)):  # the head needs no embeddings
        norm, head = final_norm(model), model.get_output_embeddings()
        hosts = device_of(norm), device_of(head)
        norm.to(device), head.to(device)
        try:
            out = torch.empty(windows.shape[0], dtype=torch.float64)
            for sl in batches(windows.shape[0], batch_size):
                logits = _logits(model, norm, head, hidden[sl].to(device))
                target = windows[sl, 1:].to(device)
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                      reduction="none")
                out[sl] = nll.view(target.shape[0], -1).double().sum(dim=1).cpu()
        finally:
            norm.to(hosts[0]), head.to(hosts[1])
    return out
