"""Data: where the offline files live, raw text, and calibration token sequences.

``hub_offline`` and ``hub_reachable`` are re-exported from :mod:`oats.hub` (the hub policy).
"""
from __future__ import annotations

from ..hub import hub_offline, hub_reachable
from .calibration import STYLES, get_calibration, load_calibration_corpus
from .paths import DataNotAvailableError, cache_dir, data_file, data_root
from .text import load_local_documents, wikitext2_test_text

__all__ = [
    "DataNotAvailableError", "data_root", "cache_dir", "data_file", "hub_offline", "hub_reachable",
    "get_calibration", "load_calibration_corpus", "STYLES", "load_local_documents", "wikitext2_test_text",
]
