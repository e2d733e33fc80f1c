"""lm-eval tasks over the offline data under the data root.

``piqa_local``
    PIQA validation (``piqa/valid.jsonl`` + ``piqa/valid-labels.lst``, 1,838 items),
    the prompt of lm-eval's ``piqa``: ``"Question: {goal}\\nAnswer:"`` with the
    choices ``sol1`` / ``sol2``; metrics ``acc`` and ``acc_norm``.
``mmlu_local_<subject>`` (57 subjects, e.g. ``mmlu_local_abstract_algebra``)
    MMLU test questions from ``mmlu/mmlu.jsonl`` (the 2 stray header rows whose
    answer is literally ``"answer"`` are dropped; the subject is ``topic`` with
    spaces as underscores), the prompt, description and choices of lm-eval's
    ``mmlu_<subject>``. The file holds only MMLU's *test* split, so the **first 5
    questions of each subject (file order) form a fixed dev split** used for the
    few-shot examples (``first_n`` sampler, as lm-eval does with the real dev
    split) and are not evaluated: each subject scores 5 questions fewer than the
    official test set (14,042 - 285 = 13,757 in all).
``wikitext_local``
    lm-eval's ``wikitext`` (rolling log-likelihood, word / byte perplexity,
    same detokenizer and word count) over the articles of the local WikiText-2
    test file, rebuilt with :func:`oats.data.text.wikitext2_rows_from_raw` and
    cut at the top-level headings: close to, not identical with, the hub's
    ``EleutherAI/wikitext_document_level`` pages.

Each config is a plain lm-eval task dict whose ``custom_dataset`` reads the
files from the data root given to :func:`local_task_config`; its
``metadata["source"]`` names the files and ``metadata["note"]`` the deviation
from the hub task, for result records.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from ...data.paths import data_file
from ...data.paths import data_root as _data_root
from ...data.text import WIKITEXT2_LOCAL, read_text, wikitext2_rows_from_raw

__all__ = [
    "LOCAL_TASK_PREFIXES",
    "MMLU10_SUBJECTS",
    "MMLU_DEV_SHOTS",
    "MMLU_PREFIX",
    "mmlu_subjects",
    "local_task_names",
    "local_task_config",
    "load_piqa_local",
    "load_mmlu_local",
    "load_wikitext_local",
]

PIQA_FILES = ("piqa/valid.jsonl", "piqa/valid-labels.lst")
MMLU_FILE = "mmlu/mmlu.jsonl"
MMLU_PREFIX = "mmlu_local_"
MMLU_DEV_SHOTS = 5
LOCAL_TASK_PREFIXES = ("piqa_local", MMLU_PREFIX, "wikitext_local")
# the official OATS "MMLU" (5-shot, averaged weighted by question count)
MMLU10_SUBJECTS = (
    "abstract_algebra", "business_ethics", "college_computer_science", "college_mathematics",
    "conceptual_physics", "formal_logic", "machine_learning", "miscellaneous", "philosophy", "global_facts",
)
_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
_TOP_HEADING = re.compile(r"^ = [^=].* = $")


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]) -> Any:
    import datasets  # installed with lm-eval

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def load_piqa_local(data_root: str | Path | None = None, **_: Any) -> Any:
    """PIQA validation as a ``DatasetDict`` with one split, ``validation``."""
    questions, labels = (data_file(name, data_root) for name in PIQA_FILES)
    rows = [json.loads(line) for line in read_text(questions).splitlines() if line.strip()]
    answers = [int(line) for line in read_text(labels).split()]
    if len(rows) != len(answers):
        raise ValueError(f"{questions} has {len(rows)} items but {labels} {len(answers)} labels")
    docs = [
        {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": label}
        for r, label in zip(rows, answers, strict=True)
    ]
    return _dataset_dict({"validation": docs})


@functools.lru_cache(maxsize=2)
def _mmlu_by_subject(path: str, mtime_ns: int) -> dict[str, list[dict[str, Any]]]:
    del mtime_ns  # part of the cache key only
    subjects: dict[str, list[dict[str, Any]]] = {}
    for line in read_text(path).splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["correct_answer"] not in ("A", "B", "C", "D"):  # the stray header rows ("answer")
            continue
        subjects.setdefault(row["topic"].strip().replace(" ", "_"), []).append({
            "question": row["question"],
            "choices": [row[f"answer_{c}"] for c in "abcd"],
            "answer": "ABCD".index(row["correct_answer"]),
        })
    return subjects


def _mmlu_questions(data_root: str | Path | None) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    path = data_file(MMLU_FILE, data_root)
    return path, _mmlu_by_subject(str(path), path.stat().st_mtime_ns)


def mmlu_subjects(data_root: str | Path | None = None) -> list[str]:
    """The subjects of the local MMLU file (lm-eval spelling, e.g. ``"abstract_algebra"``)."""
    return sorted(_mmlu_questions(data_root)[1])


def load_mmlu_local(subject: str, data_root: str | Path | None = None, **_: Any) -> Any:
    """One MMLU subject as a ``DatasetDict``: ``dev`` (first 5 questions) and ``test`` (the rest)."""
    path, subjects = _mmlu_questions(data_root)
    if subject not in subjects:
        raise KeyError(f"no MMLU subject {subject!r} in {path}; subjects: {', '.join(sorted(subjects))}")
    rows = subjects[subject]
    return _dataset_dict({"dev": rows[:MMLU_DEV_SHOTS], "test": rows[MMLU_DEV_SHOTS:]})


def _wikitext_pages(text: str) -> list[str]:
    pages: list[list[str]] = []
    for row in wikitext2_rows_from_raw(text):
        if _TOP_HEADING.match(row.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(row or " \n")  # blank lines of the raw file are " \n"
    return [text for text in ("".join(page) for page in pages) if text.strip()]


def load_wikitext_local(data_root: str | Path | None = None, **_: Any) -> Any:
    """WikiText-2 test articles as a ``DatasetDict`` with one split, ``test`` (field ``page``)."""
    pages = _wikitext_pages(read_text(data_file(WIKITEXT2_LOCAL, data_root)))
    return _dataset_dict({"test": [{"page": page} for page in pages]})


def local_task_names(data_root: str | Path | None = None) -> list[str]:
    """All local task names (needs the MMLU file to list its subjects)."""
    return ["piqa_local", "wikitext_local", *(MMLU_PREFIX + s for s in mmlu_subjects(data_root))]


def _piqa_config() -> dict[str, Any]:
    return {
        "task": "piqa_local",
        "custom_dataset": load_piqa_local,
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "metric_list": [_ACC, _ACC_NORM],
        "source_files": PIQA_FILES,
    }


def _mmlu_config(root: Path, subject: str) -> dict[str, Any]:
    if subject not in mmlu_subjects(root):
        raise KeyError(f"unknown MMLU subject {subject!r}; subjects: {', '.join(mmlu_subjects(root))}")
    return {
        "task": MMLU_PREFIX + subject,
        "custom_dataset": load_mmlu_local,
        "dataset_kwargs": {"subject": subject},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": MMLU_DEV_SHOTS,
        "description": f"The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
        "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [_ACC],
        "source_files": (MMLU_FILE,),
        "note": f"few-shot examples: fixed dev split = first {MMLU_DEV_SHOTS} questions of the subject "
        "in file order (not evaluated)",
    }


def _wikitext_config() -> dict[str, Any]:
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    return {
        "task": "wikitext_local",
        "custom_dataset": load_wikitext_local,
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": wikitext_detokenizer,
        "process_results": process_results,
        "metric_list": [
            {"metric": m, "aggregation": agg, "higher_is_better": False}
            for m, agg in (("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
                           ("bits_per_byte", "bits_per_byte"))
        ],
        "source_files": (WIKITEXT2_LOCAL,),
        "note": "articles rebuilt from the local test file (blank lines restored around headings): "
        "close to, not identical with, the hub's wikitext_document_level pages",
    }


def local_task_config(name: str, data_root: str | Path | None = None) -> dict[str, Any]:
    """The lm-eval task config dict of the local task ``name``.

    Raises:
        KeyError: ``name`` is no local task (or names an unknown MMLU subject).
        DataNotAvailableError: the task's files are missing under the data root.
    """
    root = _data_root(data_root)
    if name == "piqa_local":
        cfg = _piqa_config()
    elif name == "wikitext_local":
        cfg = _wikitext_config()
    elif name.startswith(MMLU_PREFIX):
        cfg = _mmlu_config(root, name[len(MMLU_PREFIX):])
    else:
        raise KeyError(f"no local task {name!r}; local tasks: piqa_local, wikitext_local, {MMLU_PREFIX}<subject>")
    files = [data_file(relative, root) for relative in cfg.pop("source_files")]
    cfg["dataset_kwargs"] = {**cfg.get("dataset_kwargs", {}), "data_root": str(root)}
    cfg["metadata"] = {
        "version": 1.0,
        "source": "local:" + ",".join(str(f) for f in files),
        "note": cfg.pop("note", ""),
    }
    return cfg
