"""OATS reproduction framework: sparse + low-rank compression of transformers and its baselines.

Three lines on a loaded Hugging Face model::

    import oats
    report = oats.compress(model, calib_ids, method="oats", compression=0.5, rank_ratio=0.3)
    print(report.summary())
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .report import CompressionReport
    from .sequential import OWLConfig

# Public names, imported lazily so that `baselines` (which builds on oats.budget/masks)
# and `oats.methods` (which calls the baselines) can import each other's modules freely.
_LAZY = {
    "NM": "budget", "BudgetError": "budget", "LayerBudget": "budget", "layer_budget": "budget",
    "parse_nm": "budget", "CompressedLinear": "layers", "SplitLinear": "layers",
    "load_compressed": "layers", "merge_all": "layers", "save_compressed": "layers", "set_terms": "layers",
    "METHODS": "methods", "Method": "methods", "get_method": "methods", "CompressionReport": "report",
    "OWLConfig": "sequential", "compress_model": "sequential",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'oats' has no attribute {name!r}")

__all__ = [
    "compress", "compress_model", "get_method", "METHODS", "Method", "OWLConfig", "NM", "parse_nm",
    "layer_budget", "LayerBudget", "BudgetError", "CompressedLinear", "SplitLinear", "save_compressed",
    "load_compressed", "merge_all", "set_terms", "CompressionReport",
]


def compress(
    model: "nn.Module",
    calib: "torch.Tensor",
    method: str = "oats",
    compression: float | None = 0.5,
    nm: str | None = None,
    *,
    device: str = "cpu",
    owl: "bool | OWLConfig" = False,
    checkpoint_dir: str | Path | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
    **method_params,
) -> "CompressionReport":
    """Compress ``model`` in place with ``method`` (oats, wanda, sparsegpt, magnitude, lowrank).

    ``method_params`` go to the method (e.g. ``rank_ratio=0.3, iterations=80`` for OATS).
    ``owl=True`` uses OWL's per-block allocation with default settings.
    """
    from .methods import get_method
    from .sequential import OWLConfig, compress_model

    owl_cfg = OWLConfig() if owl is True else (owl or None)
    return compress_model(
        model, calib, get_method(method, **method_params), compression, nm, device=device, owl=owl_cfg,
        checkpoint_dir=checkpoint_dir, batch_size=batch_size, offload_activations=offload_activations,
        progress=progress,
    )
