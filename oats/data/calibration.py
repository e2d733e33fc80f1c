"""Calibration token sequences: C4 / WikiText-2 from the hub, or local text.

:func:`get_calibration` returns a ``LongTensor`` of shape ``(nsamples, seqlen)``
in one of two styles:

``"windows"`` (Wanda / SparseGPT, default seed 0)
    Python ``random.Random(seed)``; draw a random document, keep it if it has
    more than ``seqlen`` tokens, and take a random window of ``seqlen`` tokens
    from it - the same draws as the reference code, so the same samples for the
    same tokenizer. For a corpus that the reference code treats as one stream
    (WikiText-2 train, joined with ``" "``) windows are drawn from the stream.
    **Fallback for short documents** (e.g. the local file of Wikipedia lead
    paragraphs): when fewer than ``nsamples`` documents could hold more than
    ``seqlen`` tokens (judged by their UTF-8 length, so nothing is tokenized),
    or every such document turns out too short once tokenized, all documents are
    joined with ``"\\n\\n"`` into one stream and windows are drawn from it with a
    fresh ``random.Random(seed)``. This never loops forever.

``"concat"`` (official OATS code, inherited from SliceGPT; default seed 42)
    ``torch.Generator().manual_seed(seed)``; draw documents without replacement
    and append ``doc + " "`` until the text has at least ``seqlen`` tokens, then
    tokenize it truncated to ``seqlen``.

Sources: ``"c4"`` (hub ``allenai/c4``, shard ``en/c4-train.00000-of-01024.json.gz``
as in the Wanda / SparseGPT code), ``"wikitext2"`` (hub ``wikitext-2-raw-v1``
train), ``"wiki_vital_en"`` (the offline file ``<data root>/calib/wiki_vital_en.txt``:
a different distribution from C4, so reports must name it), or the path of a
text file / folder of ``*.txt`` files (documents separated by blank lines; a
relative path is tried against the working directory, then the data root).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from .paths import DataNotAvailableError, data_file
from .paths import data_root as _data_root
from .text import WIKITEXT2_HUB, load_hub_texts, load_local_documents

__all__ = [
    "STYLES",
    "DEFAULT_SEEDS",
    "HUB_SOURCES",
    "LOCAL_SOURCES",
    "CalibrationCorpus",
    "load_calibration_corpus",
    "get_calibration",
]

log = logging.getLogger(__name__)

STYLES = ("windows", "concat")
DEFAULT_SEEDS = {"windows": 0, "concat": 42}
HUB_SOURCES = ("c4", "wikitext2")
LOCAL_SOURCES = {"wiki_vital_en": "calib/wiki_vital_en.txt"}
_C4_SHARD = "en/c4-train.00000-of-01024.json.gz"
_TOKEN_SLACK = 8  # special tokens a tokenizer may add on top of >= 1 byte per token
_OFFLINE_HINT = (
    "source='wiki_vital_en' (<data root>/calib/wiki_vital_en.txt; a different distribution "
    "from C4 - say so in reports) or the path of a local text file"
)


@dataclass(frozen=True)
class CalibrationCorpus:
    """Documents to draw calibration sequences from.

    Attributes:
        documents: the texts, in their original order.
        origin: ``"hub:<dataset>"`` or ``"local:<path>"``, for reports.
        stream: the reference code treats the corpus as one stream (WikiText-2).
        joiner: what the documents are joined with when used as one stream.
    """

    documents: list[str]
    origin: str
    stream: bool = False
    joiner: str = "\n\n"


def _local_source_path(source: str, root: str | Path | None) -> Path:
    if source in LOCAL_SOURCES:
        return data_file(LOCAL_SOURCES[source], root)
    path = Path(source).expanduser()
    if path.exists():
        return path
    try:
        under_root = _data_root(root) / source
    except DataNotAvailableError:
        under_root = None
    if under_root is not None and under_root.exists():
        return under_root
    known = ", ".join([*HUB_SOURCES, *LOCAL_SOURCES])
    raise DataNotAvailableError(
        f"unknown calibration source {source!r}: not one of {known}, and no such file or folder "
        "(relative paths are tried against the working directory and the data root)"
    )


def load_calibration_corpus(source: str = "c4", data_root: str | Path | None = None) -> CalibrationCorpus:
    """Load the documents of a calibration source (see the module docstring for the names).

    Raises:
        DataNotAvailableError: the hub source is unreachable (the message names the
            local alternative), or a local source does not exist.
    """
    if source == "c4":
        docs = load_hub_texts(
            "allenai/c4", split="train", data_files={"train": _C4_SHARD}, local_alternative=_OFFLINE_HINT
        )
        return CalibrationCorpus(docs, origin=f"hub:allenai/c4/{_C4_SHARD}")
    if source == "wikitext2":
        hub_path, config = WIKITEXT2_HUB
        docs = load_hub_texts(hub_path, name=config, split="train", local_alternative=_OFFLINE_HINT)
        return CalibrationCorpus(docs, origin=f"hub:{hub_path}/{config}/train", stream=True, joiner=" ")
    path = _local_source_path(source, data_root)
    return CalibrationCorpus(load_local_documents(path), origin=f"local:{path}")


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """1-D token ids of ``text`` as the tokenizer's ``__call__`` makes them (special tokens included)."""
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]


def _windows_from_stream(
    tokenizer: PreTrainedTokenizerBase, text: str, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    ids = _token_ids(tokenizer, text)
    if ids.numel() <= seqlen:
        raise ValueError(f"the calibration text has {ids.numel()} tokens; seqlen={seqlen} needs more")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def _windows_from_documents(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], nsamples: int, seqlen: int, seed: int
) -> torch.Tensor | None:
    """Wanda's rejection sampling; ``None`` when the corpus cannot supply long documents."""
    candidates = {i for i, doc in enumerate(docs) if len(doc.encode("utf-8")) + _TOKEN_SLACK > seqlen}
    if len(candidates) < nsamples:
        return None
    rng = random.Random(seed)
    too_short: set[int] = set()
    windows: list[torch.Tensor] = []
    while len(windows) < nsamples:
        i = rng.randint(0, len(docs) - 1)
        if i not in candidates or i in too_short:
            continue  # the reference code would tokenize it and reject it: same draws
        ids = _token_ids(tokenizer, docs[i])
        if ids.numel() <= seqlen:
            too_short.add(i)
            if len(too_short) == len(candidates):
                return None
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def _windows(
    tokenizer: PreTrainedTokenizerBase, corpus: CalibrationCorpus, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    if not corpus.stream:
        sampled = _windows_from_documents(tokenizer, corpus.documents, nsamples, seqlen, seed)
        if sampled is not None:
            return sampled
        log.info(
            "%s: too few documents longer than %d tokens for %d windows; drawing windows from "
            "all documents joined into one stream", corpus.origin, seqlen, nsamples,
        )
    return _windows_from_stream(tokenizer, corpus.joiner.join(corpus.documents), nsamples, seqlen, seed)


def _concat(
    tokenizer: PreTrainedTokenizerBase, corpus: CalibrationCorpus, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    docs = [doc for doc in corpus.documents if doc.strip()]
    remaining = list(range(len(docs)))
    generator = torch.Generator().manual_seed(seed)
    samples: list[torch.Tensor] = []
    for _ in range(nsamples):
        parts: list[str] = []
        estimate = 0  # sum of per-piece token counts: an upper bound of the joined count, in practice
        while True:
            if not remaining:
                raise ValueError(
                    f"{corpus.origin}: ran out of documents after {len(samples)} of {nsamples} "
                    f"sequences of {seqlen} tokens (style 'concat' draws without replacement)"
                )
            pick = int(torch.randint(0, len(remaining), (1,), generator=generator).item())
            parts.append(docs[remaining.pop(pick)] + " ")
            estimate += len(tokenizer.tokenize(parts[-1]))
            if estimate >= seqlen and len(tokenizer.tokenize("".join(parts))) >= seqlen:
                break
        ids = tokenizer("".join(parts), return_tensors="pt", truncation=True, max_length=seqlen).input_ids[0]
        samples.append(ids)
    return torch.stack(samples)


def get_calibration(
    tokenizer: PreTrainedTokenizerBase,
    source: str = "c4",
    nsamples: int = 128,
    seqlen: int = 2048,
    style: str = "windows",
    seed: int | None = None,
    data_root: str | Path | None = None,
    bos_per_window: bool = False,
) -> torch.Tensor:
    """Calibration token ids of shape ``(nsamples, seqlen)`` (dtype ``torch.long``).

    Args:
        tokenizer: the model's tokenizer.
        source: ``"c4"``, ``"wikitext2"``, ``"wiki_vital_en"`` or a local text file / folder.
        nsamples: number of sequences (> 0).
        seqlen: tokens per sequence (> 0); always explicit, never the model's maximum.
        style: ``"windows"`` (Wanda / SparseGPT) or ``"concat"`` (official OATS).
        seed: RNG seed; ``None`` means the style's reference default (0 / 42).
        data_root: data root override for local sources.
        bos_per_window: every sequence starts with the tokenizer's BOS token (it is put in front,
            and the last token dropped, where the sampled sequence does not already start with it).

    Raises:
        ValueError: bad ``nsamples`` / ``seqlen`` / ``style``, or too little text.
        DataNotAvailableError: the source cannot be loaded (names the offline alternative).
    """
    if style not in STYLES:
        raise ValueError(f"unknown calibration style {style!r}; allowed: {', '.join(STYLES)}")
    if not isinstance(nsamples, int) or nsamples <= 0:
        raise ValueError(f"nsamples must be a positive integer, got {nsamples!r}")
    if not isinstance(seqlen, int) or seqlen <= 0:
        raise ValueError(f"seqlen must be a positive integer, got {seqlen!r}")
    corpus = load_calibration_corpus(source, data_root)
    seed = DEFAULT_SEEDS[style] if seed is None else seed
    sample = _windows if style == "windows" else _concat
    ids = sample(tokenizer, corpus, nsamples, seqlen, seed).long()
    if bos_per_window:
        from ..eval.perplexity import require_bos

        bos = require_bos(tokenizer)
        missing = ids[:, 0] != bos
        ids[missing] = torch.cat([torch.full((int(missing.sum()), 1), bos, dtype=ids.dtype), ids[missing, :-1]], 1)
    log.info("calibration: %d x %d tokens, style %s, seed %d, from %s", nsamples, seqlen, style, seed, corpus.origin)
    return ids
