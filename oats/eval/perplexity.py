"""Token perplexity on WikiText-2 test, Wanda / SparseGPT protocol.

The test text is joined with ``"\\n\\n"`` and tokenized once; the token stream
is cut into ``n = len // seqlen`` non-overlapping windows (the tail is
dropped); every window is scored on its own (no context carried over) and the
perplexity is ``exp`` of the mean token NLL over all predicted tokens
(``seqlen - 1`` per window). This equals Wanda's ``exp(sum(loss_i * seqlen) /
(n * seqlen))`` since all windows have the same length.

The official OATS code reports lm-eval's ``wikitext`` *word* perplexity instead;
that one is run through :mod:`oats.eval.lm_eval_bridge` (task ``wikitext`` or
``wikitext_local``). The record says which protocol produced a number.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..data.text import read_text, wikitext2_test_text

__all__ = ["perplexity", "window_nll", "PERPLEXITY_SOURCES"]

PERPLEXITY_SOURCES = ("wikitext2", "wikitext2-hub", "wikitext2-local")
_PROTOCOL = (
    "token perplexity (Wanda/SparseGPT): text joined with '\\n\\n', tokenized once, "
    "non-overlapping windows of {seqlen} tokens, exp(mean NLL over all predicted tokens)"
)


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL (float64) of each row of ``windows`` (shape ``(b, seqlen)``)."""
    logits = _logits(model, windows).float()
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none"
    )
    return nll.view(windows.shape[0], -1).double().sum(dim=1)


def _eval_text(source: str, data_root: str | Path | None) -> tuple[str, str, str]:
    """``(task name, text, origin)`` for a perplexity source."""
    if source in PERPLEXITY_SOURCES:
        mode = {"wikitext2": "auto", "wikitext2-hub": "hub", "wikitext2-local": "local"}[source]
        text, origin = wikitext2_test_text(mode, data_root)  # type: ignore[arg-type]
        return "wikitext2", text, origin
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(
            f"unknown perplexity source {source!r}; allowed: {', '.join(PERPLEXITY_SOURCES)} or a text file"
        )
    return path.stem, read_text(path), f"local:{path}"


def perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    device: str | torch.device = "cpu",
    data_root: str | Path | None = None,
    batch_size: int = 1,
    progress: bool = True,
    bos_per_window: bool = False,
    blockwise: bool = False,
) -> dict[str, Any]:
    """Token perplexity of ``model`` (evaluated as given, in memory) on WikiText-2 test.

    Args:
        model: any causal LM returning logits (``.logits``, a tuple, or a tensor);
            it is not moved; only the input ids go to ``device``.
        tokenizer: its tokenizer (special tokens are added as by ``tokenizer(text)``).
        source: ``"wikitext2"`` (hub when reachable, else the local copy),
            ``"wikitext2-hub"``, ``"wikitext2-local"``, or the path of a text file.
        seqlen: window length in tokens.
        max_windows: evaluate only the first ``max_windows`` windows (``None``: all).
        device: where the input ids are placed.
        data_root: data root override for the local WikiText-2 file.
        batch_size: windows per forward pass.
        progress: show a tqdm bar.
        bos_per_window: start every window with the tokenizer's BOS token followed by
            ``seqlen - 1`` tokens of the text (models trained to expect it, e.g. Gemma); else
            the text is tokenized as the tokenizer does by default (BOS, if any, only before
            the first window).
        blockwise: run the windows through the model block by block, one block on ``device`` at a
            time (:mod:`oats.eval.blockwise`; for models that do not fit there); same numbers.

    Returns:
        A result record: ``task``, ``metric`` (``"token_perplexity"``), ``value``,
        ``n`` (windows), ``n_tokens`` (predicted tokens), ``nll`` (mean NLL),
        ``seqlen``, ``protocol``, ``source`` (``"hub:..."`` or ``"local:<path>"``), ``bos``.
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    task, text, origin = _eval_text(source, data_root)
    if bos_per_window:
        bos = require_bos(tokenizer)
        ids = tokenizer(text, return_tensors="pt", verbose=False, add_special_tokens=False).input_ids[0]
        body = seqlen - 1
    else:
        ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
        body = seqlen
    total = ids.numel() // body
    n_windows = total if max_windows is None else min(total, max_windows)
    if n_windows < 1:
        raise ValueError(f"{origin}: {ids.numel()} tokens give no window of {seqlen} tokens")
    windows = ids[: n_windows * body].view(n_windows, body)
    if bos_per_window:
        windows = torch.cat([torch.full((n_windows, 1), bos, dtype=windows.dtype), windows], dim=1)
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    try:
        if blockwise:
            from .blockwise import blockwise_window_nll

            nll_sum = blockwise_window_nll(model, windows, device, batch_size, progress).sum().item()
        else:
            batches = range(0, n_windows, batch_size)
            for start in tqdm(batches, desc=f"ppl {task}", disable=not progress, unit="batch"):
                nll_sum += window_nll(model, windows[start : start + batch_size].to(device)).sum().item()
    finally:
        model.train(was_training)
    n_tokens = n_windows * (seqlen - 1)
    mean_nll = nll_sum / n_tokens
    return {
        "task": task,
        "metric": "token_perplexity",
        "value": math.exp(mean_nll),
        "n": n_windows,
        "n_windows_total": total,
        "n_tokens": n_tokens,
        "nll": mean_nll,
        "seqlen": seqlen,
        "protocol": _PROTOCOL.format(seqlen=seqlen),
        "source": origin,
        "bos": "every window" if bos_per_window else "as the tokenizer adds it (before the first window)",
        "blockwise": blockwise,
    }


def require_bos(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's BOS token id; a clear error if it has none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError(f"model.bos_per_window=true but the tokenizer {type(tokenizer).__name__} has no BOS token")
    return int(bos)
