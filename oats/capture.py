"""Calibration activations: capture what enters the first block, then run blocks over them.

Only the block being worked on and the activations live on the compute device; the rest of
the model stays on the host.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .models.adapters import get_adapter
from .models.lazy import disk_weights
from .profile import phase


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; a CUDA device that is not there is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to ``device``; anything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters() if p.device.type != "meta"), torch.device("cpu"))


@contextmanager
def block_on(model: nn.Module, i: int, block: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Block ``i`` of ``model`` on ``device`` for the body, then back where it was.

    A model on disk (:mod:`oats.models.lazy`) has the block read from its files first and, when
    streamed, released after (the body registers a compressed block's file before that).
    """
    weights = disk_weights(model)
    if weights is not None:
        with phase("load"):
            weights.load(i, block)
    host = device_of(block)
    block.to(device)
    yield block
    block.to(host)
    if weights is not None:
        with phase("release"):
            weights.done(i, block)


@contextmanager
def outside_blocks(model: nn.Module, without: tuple[nn.Module | None, ...] = ()) -> Iterator[nn.Module]:
    """The model's tensors outside its blocks (embeddings, final norm, head) in memory for the body;
    a streamed model on disk (:mod:`oats.models.lazy`) reads them first, but for the modules
    ``without`` the body does not use, and frees them after."""
    weights = disk_weights(model)
    if weights is not None:
        with phase("load"):
            weights.load_outside(model, tuple(m for m in without if m is not None))
    try:
        yield model
    finally:
        if weights is not None and weights.streaming:
            weights.release_outside(model)


def _move(model: nn.Module, device: torch.device) -> None:
    """``model.to(device)`` for every tensor in memory; those left on disk (meta) stay there."""
    model._apply(lambda t: t if t.device.type == "meta" else t.to(device))


class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block ``index``: records its inputs, passes hidden states through unchanged."""

    def __init__(self, index: int, last: int, store: dict) -> None:
        super().__init__()
        self.index, self.last, self.store = index, last, store

    def forward(self, hidden_states, *args, **kwargs):
        store = self.store
        if self.index == 0:
            store["inputs"].append(hidden_states.detach().to(store["keep_on"]))
        if store["kwargs"][self.index] is None:
            store["kwargs"][self.index] = {**kwargs, **({"_args": args} if args else {})}
        if self.index == self.last or store["kwargs"][-1] is not None:
            raise _StopForward  # everything needed from this sample is recorded
        return hidden_states


@torch.no_grad()
def capture_inputs(model: nn.Module, blocks: nn.ModuleList, calib: torch.Tensor, device: torch.device,
                   keep_on: torch.device, call: Callable[[nn.Module, torch.Tensor], Any] | None = None,
                   ) -> tuple[torch.Tensor, list[dict]]:
    """Hidden states entering block 0 for every calibration item, and each block's keyword inputs.

    calib: (n, seqlen) token ids, or (n, C, H, W) images for a vision encoder -> inputs
    (n, tokens, hidden) on ``keep_on``, and per-block kwargs (attention mask, position
    embeddings, ...) captured from the first item; they depend only on the number of
    tokens, which is the same for all items. ``call(model, item)`` runs the model on one
    item (default: the model's adapter's, e.g. ``model(ids[None], use_cache=False)``).
    """
    call = call or get_adapter(model).call
    originals = list(blocks)
    store: dict = {"inputs": [], "kwargs": [None] * len(blocks), "keep_on": keep_on}
    for i in range(len(blocks)):
        blocks[i] = _Catcher(i, len(blocks) - 1, store)
    try:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        with outside_blocks(model, without=(head,)):  # block 0's inputs need no head
            host = device_of(model)
            _move(model, device)  # embeddings, rotary tables, norms; blocks are detached
            try:
                for item in calib:
                    try:
                        call(model, item.to(device))
                    except _StopForward:
                        pass
            finally:
                _move(model, host)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return torch.cat(store["inputs"]), store["kwargs"]


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for a in range(0, n, batch_size):
        yield slice(a, min(a + batch_size, n))


def call_block(block: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """The block's hidden-state output for inputs x (batch, tokens, hidden) and captured kwargs."""
    kw = dict(kw)
    args = kw.pop("_args", ())
    out = block(x, *args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inps: torch.Tensor, kw: dict, device: torch.device, batch_size: int,
              out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Forward every calibration sequence through ``block``; writes into ``out`` (may be ``inps``)."""
    kw = to_device(kw, device)
    for sl in batches(inps.shape[0], batch_size):
        y = call_block(block, inps[sl].to(device), kw)
        if out is not None:
            out[sl] = y.to(out.device)
    return out
