"""CPU inference speed: export a compressed model for the CPU, run it in-process, time it.

* :mod:`.env`: one thread pool (``MKL_THREADING_LAYER=GNU``, ``KMP_BLOCKTIME=0``,
  ``OPENBLAS_NUM_THREADS``), the MKL engine, and the provenance a report records.
* :mod:`.export`: every linear as numpy / CSR (dense, sparse, sparse + low-rank); ONNX export.
* :mod:`.engines`: in-process modules for those layers (MKL or scipy CSR, torch / numpy / MKL
  dense); :func:`to_engine` swaps them into a model.
* :mod:`.timing`: interleaved repeats, median and min-max, speedup over the fastest dense engine.
* :mod:`.model`: whole-model speed, :func:`evaluate_speed` (``eval.speed`` of a pipeline run).
* :mod:`.report`: a report as Markdown.

The synthetic Llama-shaped blocks and their ONNX graphs are benchmark code: ``reproduce/speed_blocks.py``.

Names load lazily, so that ``oats.speed.env`` can set the thread variables before numpy and torch load.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "env": ("ENGINE_PACKAGES", "THREAD_ENV", "available_engines", "engine_versions", "mkl_error", "mkl_module",
            "provenance", "set_thread_env", "sparse_engine", "thread_settings"),
    "export": ("NM_PATTERNS", "ExportedLinear", "detect_nm", "export_linear", "export_modules", "export_onnx",
               "has_compressed", "rowwise_csr", "target_modules", "weight_bytes", "weight_params"),
    "engines": ("DENSE_ENGINES", "SPARSE_ENGINES", "CPULinear", "CPUSplitLinear", "build_engine_modules",
                "engines_here", "swap_modules", "to_engine"),
    "timing": ("Runner", "measure"),
    "model": ("evaluate_speed", "model_runners", "model_speed", "model_structure_speed", "speed_records",
              "structure_like", "time_variants"),
    "report": ("format_report",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'oats.speed' has no attribute {name!r}")
