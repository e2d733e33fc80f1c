"""OATS reproduction framework: sparse + low-rank compression of transformers and its baselines.

Three lines on a loaded Hugging Face model::

    import oats
    report = oats.compress(model, calib_ids, method="oats", compression=0.5, rank_ratio=0.3)
    print(report.summary())
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .allocation import OWLConfig
from .budget import NM, BudgetError, LayerBudget, layer_budget, parse_nm
from .layers import CompressedLinear, SplitLinear, load_compressed, merge_all, save_compressed, set_terms
from .registry import METHODS, Factors, Method, discover, get_method, register
from .report import CompressionReport
from .sequential import compress_model

__all__ = [
    "compress", "compress_model", "get_method", "register", "discover", "METHODS", "Method", "Factors", "OWLConfig",
    "NM", "parse_nm", "layer_budget", "LayerBudget", "BudgetError", "CompressedLinear", "SplitLinear",
    "save_compressed", "load_compressed", "merge_all", "set_terms", "CompressionReport",
]


def compress(
    model: nn.Module,
    calib: torch.Tensor,
    method: str = "oats",
    compression: float | None = 0.5,
    nm: str | None = None,
    *,
    device: str = "cpu",
    owl: bool | OWLConfig = False,
    checkpoint_dir: str | Path | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
    layer_workers: int | None = None,
    **method_params,
) -> CompressionReport:
    """Compress ``model`` in place with a registered ``method`` (``oats.discover()`` lists them).

    ``method_params`` go to the method (e.g. ``rank_ratio=0.3, iterations=80`` for OATS).
    ``owl=True`` uses OWL's per-block allocation with default settings. ``layer_workers``: linears of a
    block compressed at once (None: two for small layers on a CPU with 2 or more threads, else one).
    """
    owl_cfg = OWLConfig() if owl is True else (owl or None)
    return compress_model(
        model, calib, get_method(method, **method_params), compression, nm, device=device, owl=owl_cfg,
        checkpoint_dir=checkpoint_dir, batch_size=batch_size, offload_activations=offload_activations,
        progress=progress, layer_workers=layer_workers,
    )
