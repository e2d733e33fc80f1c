"""Data: where the offline files live, raw text, and calibration token sequences."""
from __future__ import annotations

from .calibration import STYLES, get_calibration, load_calibration_corpus
from .paths import DataNotAvailableError, cache_dir, data_file, data_root, hub_offline, hub_reachable
from .text import load_local_documents, wikitext2_test_text

__all__ = [
    "DataNotAvailableError", "data_root", "cache_dir", "data_file", "hub_offline", "hub_reachable",
    "get_calibration", "load_calibration_corpus", "STYLES", "load_local_documents", "wikitext2_test_text",
]
