"""lm-eval task definitions over the offline data files (PIQA, MMLU, WikiText-2)."""
from __future__ import annotations

from .local import LOCAL_TASK_PREFIXES, MMLU10_SUBJECTS, local_task_config, local_task_names, mmlu_subjects

__all__ = ["LOCAL_TASK_PREFIXES", "MMLU10_SUBJECTS", "local_task_config", "local_task_names", "mmlu_subjects"]
