"""The one policy for the Hugging Face hub: whether it may be used, and how its absence is reported.

Everything that can fetch from the hub (language models, vision models, WikiText-2 /
C4 text, lm-eval tasks) asks this module instead of deciding for itself:

* :func:`hub_offline`: the environment asks the hub clients not to use the network;
* :func:`hub_reachable`: not offline, and the hub endpoint answers (tried once per process);
* :func:`local_files_only`: the value for ``from_pretrained(local_files_only=)``, so that
  an unreachable hub costs one quick look into the local Hugging Face cache;
* :func:`hub_client_may_run`: whether a client that cannot be told "local files only"
  (``datasets``, lm-eval) may be called at all;
* :func:`not_available_message`: the one wording of "X is not available: why (detail). What to do."

Callers raise their own error type (``ModelNotAvailableError``, ``DataNotAvailableError``)
with that message. Nothing heavy is imported here (no torch, no transformers).
"""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

__all__ = [
    "OFFLINE_ENV",
    "hub_offline",
    "hub_reachable",
    "local_files_only",
    "hub_client_may_run",
    "not_available_message",
]

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """True when the environment asks the Hugging Face libraries not to use the network."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(var, "").strip().lower() in truthy for var in OFFLINE_ENV)


@functools.lru_cache(maxsize=1)
def _endpoint_answers(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub may be used: not offline and its endpoint answers.

    One TCP connection to ``HF_ENDPOINT`` (default ``https://huggingface.co``) is
    tried, once per process, so that an unreachable hub costs ``timeout`` seconds
    instead of the hub clients' retry loops (about 25 s per call).
    """
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return _endpoint_answers(url.hostname or "huggingface.co", port, timeout)


def local_files_only() -> bool:
    """``from_pretrained(local_files_only=)``: only the local Hugging Face cache unless the hub answers."""
    return not hub_reachable()


def hub_client_may_run() -> bool:
    """Whether a hub client without a "local files only" switch (``datasets``, lm-eval) may be called.

    Yes when the hub answers, or in offline mode (the client then reads only its
    local cache); no when the hub is unreachable and offline mode is not set: the
    client would retry for about 25 s per call before failing. Callers then raise
    at once with :func:`not_available_message` and ``error=None``.
    """
    return hub_offline() or hub_reachable()


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def not_available_message(what: str, remedy: str, error: BaseException | None = None, checked: str = "") -> str:
    """The standard message for something that is not local and that the hub cannot provide now.

    Args:
        what: what is missing, e.g. ``"model 'org/name'"``.
        remedy: what to use instead, one or more full sentences.
        error: the hub client's exception (its first line is quoted); ``None`` when
            no client was called because the hub is unreachable (see :func:`hub_client_may_run`).
        checked: the local places already ruled out, e.g. ``"it is no local folder"``.

    Returns:
        ``"<what> is not available: [<checked>, and ]<why> (<detail>). <remedy>"``, where
        ``why`` says whether offline mode is set, the hub is unreachable, or the hub
        answered but could not provide it.
    """
    if error is None:
        why = "the hub is unreachable (set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 to use a locally cached copy)"
    elif hub_offline():
        why = f"offline mode is set ({' / '.join(OFFLINE_ENV)}) and it is not in the local Hugging Face cache"
    elif not hub_reachable():
        why = "the hub is unreachable and it is not in the local Hugging Face cache"
    else:
        why = "the hub could not provide it"
    detail = f" ({_first_line(error)})" if error is not None else ""
    ruled_out = f"{checked}, and " if checked else ""
    return f"{what} is not available: {ruled_out}{why}{detail}. {remedy}"
