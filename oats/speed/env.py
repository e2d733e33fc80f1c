"""The environment a speed measurement runs in: one thread pool, the MKL engine, and their provenance.

Imports neither numpy nor torch at module level, so that :func:`set_thread_env` can set the thread
variables before they load (``reproduce/bench_speed.py`` calls it first thing).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
from importlib import metadata
from typing import Any

from .. import runtime

ENGINE_PACKAGES = ("torch", "numpy", "scipy", "sparse-dot-mkl", "mkl", "onnx", "onnxruntime", "deepsparse")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME",
              "MKL_THREADING_LAYER", "OMP_WAIT_POLICY", "NM_DISABLE_ANALYTICS")

_MKL: object | None = None
_MKL_ERROR: str | None = None


def mkl_module():
    """``sparse_dot_mkl`` with the mkl wheel's ``libmkl_rt`` found, or None (see :func:`mkl_error`).

    Sets, unless already set, ``MKL_RT`` (the library inside this environment) and
    ``MKL_THREADING_LAYER=GNU``, so MKL runs on the same GNU OpenMP pool as torch (one pool).
    """
    global _MKL, _MKL_ERROR
    if _MKL is not None or _MKL_ERROR is not None:
        return _MKL
    if "MKL_RT" not in os.environ:
        for lib in sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))):
            os.environ["MKL_RT"] = lib
            break
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    try:
        import sparse_dot_mkl

        _MKL = sparse_dot_mkl
    except ImportError as e:  # the package, or the MKL runtime, is missing
        _MKL_ERROR = f"{type(e).__name__}: {e}".split("\n")[0]
    return _MKL


def mkl_error() -> str | None:
    """Why :func:`mkl_module` is None (the import error's first line), or None when MKL loads."""
    mkl_module()
    return _MKL_ERROR


def sparse_engine() -> str:
    """The default sparse engine here: ``native`` (the bitmask kernels, :mod:`oats.native`) when built,
    else ``mkl`` when sparse-dot-mkl and MKL load, else ``scipy``."""
    from .. import native

    if native.available():
        return "native"
    return "mkl" if mkl_module() is not None else "scipy"


def available_engines() -> dict[str, bool]:
    """Which engines this environment has: in-process (always), MKL, onnx, ONNX Runtime, DeepSparse."""
    has_onnx = importlib.util.find_spec("onnx") is not None
    return {"inprocess": True, "mkl": mkl_module() is not None, "onnx": has_onnx,
            "onnxruntime": has_onnx and importlib.util.find_spec("onnxruntime") is not None,
            "deepsparse": importlib.util.find_spec("deepsparse") is not None}


def set_thread_env(threads: int) -> None:
    """One thread pool: torch and MKL share GNU OpenMP (``MKL_THREADING_LAYER=GNU``) with ``threads``
    threads, OpenBLAS (numpy) gets the same count but never runs concurrently with them,
    ``KMP_BLOCKTIME=0`` (no spinning if Intel OpenMP is loaded). The variables take effect for the
    libraries loaded later (the MKL package); those already loaded (torch's OpenMP, numpy's
    OpenBLAS) are set through their own calls and threadpoolctl. OpenBLAS's threads spin for 2^28
    cycles after each call unless ``OPENBLAS_THREAD_TIMEOUT`` was set before numpy loaded (the entry
    points set it to 4): spinning, they took the cores from whatever engine was timed next (one
    14336 x 4096 layer, 128 tokens, 2 threads: torch's bf16 GEMM 40.8 -> 19.8 ms, the native prefill
    70.7 -> 36.0 ms once they slept)."""
    os.environ.update(runtime.environment({"threads": threads}))  # OMP_, MKL_, OPENBLAS_NUM_THREADS
    os.environ["KMP_BLOCKTIME"] = "0"
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    mkl = mkl_module()
    if mkl is not None:
        mkl.mkl_set_num_threads(threads)


def thread_settings() -> dict[str, Any]:
    """The thread variables (:data:`THREAD_ENV`), torch's and MKL's thread counts and, with
    threadpoolctl, every thread pool loaded in this process."""
    import torch

    out: dict[str, Any] = {k: os.environ.get(k) for k in THREAD_ENV}
    out["torch_threads"] = torch.get_num_threads()
    mkl = mkl_module()
    out["mkl_threads"] = mkl.mkl_get_max_threads() if mkl is not None else None
    try:
        from threadpoolctl import threadpool_info

        out["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                              for p in threadpool_info()]
    except ImportError:
        pass
    return out


def engine_versions() -> dict[str, Any]:
    """Versions of :data:`ENGINE_PACKAGES` (None: not installed), the MKL runtime, the sparse engine,
    and the CPU with torch's kernel ISA and the MKL code path (:func:`oats.runtime.describe`)."""
    out: dict[str, Any] = {}
    for name in ENGINE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    mkl = mkl_module()
    out["mkl_runtime"] = mkl.mkl_get_version_string() if mkl is not None else f"unavailable ({mkl_error()})"
    out["sparse_engine"] = sparse_engine()
    from .. import native

    out["native_kernels"] = native.status()
    out["native_isa"] = native.isa_in_use() if native.available() else None
    rt = runtime.describe()
    out["cpu"] = rt["cpu"]
    out["cpu_count"] = os.cpu_count()
    out["cpu_capability"], out["mkl_cbwr"] = rt["cpu_capability"], rt["mkl_cbwr"]
    return out


def provenance() -> dict[str, Any]:
    """What a speed report records about where it ran: ``versions`` (:func:`engine_versions`) and
    ``threads`` (:func:`thread_settings`)."""
    return {"versions": engine_versions(), "threads": thread_settings()}
