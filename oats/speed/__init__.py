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
"""
from __future__ import annotations

from .engines import (DENSE_ENGINES, SPARSE_ENGINES, CPULinear, CPUSplitLinear, build_engine_modules, engines_here,
                      swap_modules, to_engine)
from .env import (ENGINE_PACKAGES, THREAD_ENV, available_engines, engine_versions, mkl_error, mkl_module, provenance,
                  set_thread_env, sparse_engine, thread_settings)
from .export import (NM_PATTERNS, ExportedLinear, detect_nm, export_linear, export_modules, export_onnx, has_compressed,
                     rowwise_csr, target_modules, weight_bytes, weight_params)
from .model import (evaluate_speed, model_runners, model_speed, model_structure_speed, speed_records, structure_like,
                    time_variants)
from .report import format_report
from .timing import Runner, measure
