"""Evaluation: WikiText-2 token perplexity and lm-eval tasks on in-memory models."""
from __future__ import annotations

from .lm_eval_bridge import SUITES, run_lm_eval
from .perplexity import perplexity

__all__ = ["perplexity", "run_lm_eval", "SUITES"]
