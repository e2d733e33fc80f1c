"""Raw text for calibration and evaluation: hub data sets and their offline stand-ins.

Hub access goes through :func:`load_hub_texts`, which fails fast with a
:class:`~oats.data.paths.DataNotAvailableError` naming the local alternative
when the hub cannot be used (the policy and the message: :mod:`oats.hub`). Local files are read with :func:`read_text`
(UTF-8, line endings normalised to ``\\n``) and cut into documents at blank lines.

WikiText-2 test (the perplexity text) comes from :func:`wikitext2_test_text`:
the hub copy (``Salesforce/wikitext``, ``wikitext-2-raw-v1``, split ``test``;
the hub's canonical name for ``wikitext``) when reachable, else
``<data root>/wikitext-2-raw/wiki.test.raw``. The local file has the blank
lines of the original removed, so :func:`wikitext2_rows_from_raw` rebuilds the
hub's rows before both are joined with ``"\\n\\n"`` the same way; see its
docstring for how close that gets.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..hub import hub_client_may_run, hub_reachable, not_available_message
from .paths import DataNotAvailableError, data_file

__all__ = [
    "read_text",
    "split_documents",
    "load_local_documents",
    "load_hub_texts",
    "wikitext2_rows_from_raw",
    "wikitext2_test_text",
    "WIKITEXT2_HUB",
    "WIKITEXT2_LOCAL",
]

log = logging.getLogger(__name__)
WIKITEXT2_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
WIKITEXT2_LOCAL = "wikitext-2-raw/wiki.test.raw"
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file with CRLF / CR line endings normalised to LF."""
    text = Path(path).read_text(encoding="utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_documents(text: str) -> list[str]:
    """Split text into documents at blank lines; strip them and drop empty ones."""
    return [doc.strip() for doc in _BLANK_LINES.split(text) if doc.strip()]


def load_local_documents(path: str | Path) -> list[str]:
    """Documents of a text file, or of every ``*.txt`` file of a folder (sorted by name).

    Documents are separated by blank lines.

    Raises:
        DataNotAvailableError: the path does not exist or holds no text.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
    elif path.is_file():
        files = [path]
    else:
        raise DataNotAvailableError(f"no such text file or folder: {path}")
    docs = [doc for file in files for doc in split_documents(read_text(file))]
    if not docs:
        raise DataNotAvailableError(f"{path} holds no text documents (*.txt, separated by blank lines)")
    return docs


def load_hub_texts(
    path: str,
    *,
    split: str,
    name: str | None = None,
    data_files: dict[str, str] | None = None,
    column: str = "text",
    local_alternative: str,
) -> list[str]:
    """The ``column`` of a hub data set split, via :func:`datasets.load_dataset`.

    Args:
        path, name, split, data_files: as for ``datasets.load_dataset``.
        column: the text column.
        local_alternative: what to use offline; quoted in the error message.

    Raises:
        DataNotAvailableError: the hub is unreachable (and the data set is not in
            the local ``datasets`` cache when ``HF_DATASETS_OFFLINE`` is set).
    """
    label = f"data set {path}" + (f"/{name}" if name else "") + f" ({split})"
    remedy = f"Offline alternative: {local_alternative}."
    if not hub_client_may_run():  # fail now, not after the client's retry loops
        raise DataNotAvailableError(not_available_message(label, remedy))
    import datasets  # heavy import, only when the hub is used

    try:
        dataset = datasets.load_dataset(path, name, split=split, data_files=data_files)
    except (OSError, ValueError, FileNotFoundError) as exc:  # ConnectionError / DatasetNotFoundError
        raise DataNotAvailableError(not_available_message(label, remedy, error=exc)) from None
    return list(dataset[column])


def _is_heading(line: str) -> bool:
    body = line.rstrip("\n")
    return body.startswith(" = ") and body.endswith(" = ")


def wikitext2_rows_from_raw(text: str) -> list[str]:
    """Rebuild the hub's rows of WikiText-2 raw from a file whose blank lines were removed.

    On the hub each line of ``wiki.test.raw`` is a row that keeps its trailing
    ``"\\n"``, and each blank line is an empty row. In the original, every heading
    line (`` = Title = ``, `` = = Section = = ``) has a blank line before and
    after it, and paragraphs follow each other without one. This puts an empty
    row before and after each heading, which gives 4,303 rows for the local test
    file against the hub's 4,358 (the 55 other blank lines cannot be placed), so
    the ``"\\n\\n"``-joined text and its perplexity are close to, not identical
    with, the hub's. A file that still has its blank lines is passed through
    unchanged (one row per line).
    """
    lines = text.splitlines(keepends=True)
    if any(not line.strip() for line in lines):
        return ["" if not line.strip() else line for line in lines]
    rows: list[str] = []
    for line in lines:
        rows.extend(["", line, ""] if _is_heading(line) else [line])
    return rows


def wikitext2_test_text(
    source: Literal["auto", "hub", "local"] = "auto",
    data_root: str | Path | None = None,
) -> tuple[str, str]:
    """WikiText-2 raw test text joined with ``"\\n\\n"`` (the Wanda / SparseGPT protocol).

    Args:
        source: ``"hub"``, ``"local"``, or ``"auto"`` (hub when reachable and loadable,
            else local; with ``HF_HUB_OFFLINE`` set, "auto" means local).
        data_root: data root override for the local file.

    Returns:
        ``(text, origin)`` where origin is ``"hub:Salesforce/wikitext/wikitext-2-raw-v1/test"``
        or ``"local:<path>"``.
    """
    if source not in ("auto", "hub", "local"):
        raise ValueError(f"unknown WikiText-2 source {source!r}; allowed: auto, hub, local")
    if source == "hub" or (source == "auto" and hub_reachable()):
        hub_path, config = WIKITEXT2_HUB
        try:
            rows: Sequence[str] = load_hub_texts(
                hub_path, name=config, split="test",
                local_alternative=f"<data root>/{WIKITEXT2_LOCAL} (source='local')",
            )
            return "\n\n".join(rows), f"hub:{hub_path}/{config}/test"
        except DataNotAvailableError as exc:
            if source == "hub":
                raise
            log.warning("%s; using the local copy", exc)
    path = data_file(WIKITEXT2_LOCAL, data_root)
    return "\n\n".join(wikitext2_rows_from_raw(read_text(path))), f"local:{path}"
