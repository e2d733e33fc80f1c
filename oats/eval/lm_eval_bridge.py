"""Run lm-evaluation-harness tasks on an in-memory model (no save / reload).

:func:`run_lm_eval` wraps the model in lm-eval's ``HFLM(pretrained=<model>,
tokenizer=<tokenizer>)`` and returns flat result records. Task names:

* suites: ``zeroshot`` (piqa, hellaswag, arc_easy, arc_challenge, winogrande,
  rte, openbookqa, boolq; 0-shot; plain mean, as the official OATS code),
  ``mmlu10`` (the official 10-subject MMLU subset, 5-shot, mean weighted by
  question count), and their offline counterparts ``zeroshot_local``
  (``piqa_local`` only: no other zero-shot data is available offline),
  ``mmlu10_local`` and ``mmlu_local`` (all 57 local subjects);
* local tasks (:mod:`oats.eval.tasks.local`): ``piqa_local``,
  ``mmlu_local_<subject>``, ``wikitext_local``;
* any lm-eval task name (``piqa``, ``wikitext``, ``mmlu_anatomy``, ...), which
  needs the hub.

Each task contributes one record with ``acc_norm`` where the task has it, else
``acc``, and ``word_perplexity`` for the wikitext tasks; each suite adds one
aggregate record. Runs of local tasks only set ``HF_HUB_OFFLINE`` and
``HF_DATASETS_OFFLINE`` for their duration so nothing waits on the network.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.paths import DataNotAvailableError
from ..hub import hub_client_may_run, not_available_message
from .tasks.local import (
    LOCAL_TASK_PREFIXES,
    MMLU10_SUBJECTS,
    MMLU_PREFIX,
    local_task_config,
    local_task_names,
    mmlu_subjects,
)

__all__ = ["Suite", "SUITES", "ZEROSHOT_TASKS", "expand_tasks", "run_lm_eval"]

log = logging.getLogger(__name__)

ZEROSHOT_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "rte", "openbookqa", "boolq")
_METRIC_PREFERENCE = ("acc_norm", "acc", "word_perplexity")
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_OFFLINE_HINT = (
    "Offline alternatives: zeroshot_local (piqa_local), mmlu10_local / mmlu_local_<subject>, wikitext_local."
)


@dataclass(frozen=True)
class Suite:
    """A named set of tasks evaluated together and summarised by one number.

    Attributes:
        tasks: the task names (hub or local); ``None`` for "every local MMLU subject".
        num_fewshot: shots used unless the caller overrides them.
        weighted: aggregate weighted by question count (MMLU) instead of a plain mean.
    """

    tasks: tuple[str, ...] | None
    num_fewshot: int
    weighted: bool

    def task_names(self, data_root: str | Path | None) -> list[str]:
        if self.tasks is None:
            return [MMLU_PREFIX + subject for subject in mmlu_subjects(data_root)]
        return list(self.tasks)


SUITES: dict[str, Suite] = {
    "zeroshot": Suite(ZEROSHOT_TASKS, num_fewshot=0, weighted=False),
    "mmlu10": Suite(tuple(f"mmlu_{s}" for s in MMLU10_SUBJECTS), num_fewshot=5, weighted=True),
    "zeroshot_local": Suite(("piqa_local",), num_fewshot=0, weighted=False),
    "mmlu10_local": Suite(tuple(MMLU_PREFIX + s for s in MMLU10_SUBJECTS), num_fewshot=5, weighted=True),
    "mmlu_local": Suite(None, num_fewshot=5, weighted=True),
}


def _is_local(name: str) -> bool:
    return name.startswith(LOCAL_TASK_PREFIXES)


def expand_tasks(
    tasks: Sequence[str], data_root: str | Path | None = None
) -> list[tuple[str, str | None, int | None]]:
    """Expand suite names: ``(task, suite or None, the suite's default shots or None)`` per task."""
    if isinstance(tasks, str):
        tasks = [tasks]
    expanded: list[tuple[str, str | None, int | None]] = []
    for name in tasks:
        suite = SUITES.get(name)
        if suite is None:
            expanded.append((name, None, None))
        else:
            expanded.extend((task, name, suite.num_fewshot) for task in suite.task_names(data_root))
    return expanded


@contextlib.contextmanager
def _offline_env(active: bool) -> Iterator[None]:
    saved = {var: os.environ.get(var) for var in _OFFLINE_ENV}
    if active:
        os.environ.update({var: "1" for var in _OFFLINE_ENV})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _unknown_task_error(name: str, known: Sequence[str], data_root: str | Path | None) -> ValueError:
    try:
        local = local_task_names(data_root)  # piqa_local, wikitext_local, then the MMLU subjects
    except DataNotAvailableError:  # no data root: the names without the subject list
        local = ["piqa_local", "wikitext_local"]
    close = difflib.get_close_matches(name, [*SUITES, *local, *known], n=5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    subjects = [task.removeprefix(MMLU_PREFIX) for task in local[2:]]
    listed = f" with <subject> one of {', '.join(subjects)}" if subjects else ""
    hub = f"; and {len(known)} lm-eval task names (hub)" if known else ""
    return ValueError(
        f"unknown evaluation task {name!r}.{hint} Available: suites {', '.join(SUITES)}; "
        f"local tasks piqa_local, wikitext_local, {MMLU_PREFIX}<subject>{listed}{hub}."
    )


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool) -> Any:
    """lm-eval's task index (about 10 s to build with its ~15k built-in tasks), built once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _load_tasks(
    names: Sequence[str], data_root: str | Path | None
) -> tuple[dict[str, Any], Any]:
    """Build lm-eval Task objects; returns ``({name: task}, task_manager)``."""
    local = [n for n in names if _is_local(n)]
    hub = [n for n in names if not _is_local(n)]
    configs = []
    for name in local:
        try:
            configs.append(local_task_config(name, data_root))
        except KeyError:
            raise _unknown_task_error(name, [], data_root) from None
    manager = _task_manager(bool(hub))
    unknown = [n for n in hub if n not in manager.all_tasks]
    if unknown:
        raise _unknown_task_error(unknown[0], manager.all_tasks, data_root)
    what = f"the data of the lm-eval tasks {', '.join(hub)}"
    if hub and not hub_client_may_run():  # fail now, not after the retry loops
        raise DataNotAvailableError(not_available_message(what, _OFFLINE_HINT))
    try:
        loaded = manager.load([*configs, *hub])["tasks"]
    except OSError as exc:  # datasets' ConnectionError / offline-mode cache miss
        raise DataNotAvailableError(not_available_message(what, _OFFLINE_HINT, error=exc)) from None
    return loaded, manager


def _record(name: str, task: Any, result: dict[str, Any], n: int, shots: int) -> dict[str, Any]:
    import lm_eval

    metric = next((m for m in _METRIC_PREFERENCE if f"{m},none" in result), None)
    if metric is None:
        raise KeyError(f"{name}: none of {_METRIC_PREFERENCE} in the lm-eval result {sorted(result)}")
    stderr = result.get(f"{metric}_stderr,none")
    config = task.config
    metadata = config.metadata or {}
    source = metadata.get("source") or "hub:" + "/".join(
        p for p in (config.dataset_path, config.dataset_name) if p
    )
    note = f"; {metadata['note']}" if metadata.get("note") else ""
    return {
        "task": name,
        "metric": metric,
        "value": float(result[f"{metric},none"]),
        "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        "metrics": {
            key.split(",")[0]: float(value) for key, value in result.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))
        },
        "n": n,
        "num_fewshot": shots,
        "protocol": f"lm-eval {lm_eval.__version__}, {shots}-shot{note}",
        "source": source,
    }


def _aggregate(suite: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    weighted = SUITES[suite].weighted
    weights = [r["n"] if weighted else 1 for r in records]
    value = sum(w * r["value"] for w, r in zip(weights, records, strict=True)) / sum(weights)
    how = "mean weighted by question count" if weighted else "plain mean"
    metrics = sorted({r["metric"] for r in records})
    return {
        "task": suite,
        "metric": metrics[0] if len(metrics) == 1 else "mean",
        "value": value,
        "stderr": None,
        "metrics": {},
        "n": sum(r["n"] for r in records),
        "num_fewshot": records[0]["num_fewshot"],
        "protocol": f"{how} of {len(records)} tasks ({', '.join(r['task'] for r in records)}); "
        + records[0]["protocol"],
        "source": "; ".join(sorted({r["source"] for r in records})),
    }


def run_lm_eval(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    data_root: str | Path | None = None,
    bos_per_window: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate the in-memory ``model`` on lm-eval tasks and suites.

    Args:
        model: a loaded ``transformers`` causal LM (its linear layers may be
            replaced by custom modules); it is not moved or copied.
        tokenizer: its tokenizer (lm-eval may give it a pad token).
        tasks: task and suite names (see the module docstring).
        num_fewshot: shots for every task; ``None`` uses each suite's / task's
            default (0 for zero-shot, 5 for the MMLU suites and local MMLU tasks).
        limit: at most this many examples per task (a fraction if < 1): for tests only.
        batch_size: lm-eval batch size.
        device: where lm-eval places the input tensors (the model stays where it is).
        data_root: data root override for the local tasks.
        bos_per_window: tell lm-eval to start every request with BOS (``add_bos_token``);
            else lm-eval's default (the tokenizer's own setting).

    Returns:
        One record per task, ``{task, metric, value, stderr, metrics, n, num_fewshot,
        protocol, source}`` (``metrics``: every metric lm-eval reported, e.g. both
        ``acc`` and ``acc_norm``), then one aggregate record per suite requested.

    Raises:
        ValueError: an unknown task name (the message lists the available ones).
        DataNotAvailableError: hub tasks without hub access, or missing local files.
    """
    expanded = expand_tasks(tasks, data_root)
    if not expanded:
        raise ValueError("no tasks given")
    names = list(dict.fromkeys(task for task, _, _ in expanded))
    all_local = all(_is_local(n) for n in names)
    with _offline_env(all_local):
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        loaded, manager = _load_tasks(names, data_root)
        shots: dict[str, int] = {}
        for task, _, suite_shots in expanded:
            default = loaded[task].get_config("num_fewshot") or 0
            shots[task] = num_fewshot if num_fewshot is not None else (
                suite_shots if suite_shots is not None else default
            )
            loaded[task].set_config(key="num_fewshot", value=shots[task])
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  add_bos_token=True if bos_per_window else None)
        lm._device = torch.device(device)  # inputs only; HFLM takes the device of a given model
        output = simple_evaluate(
            model=lm, tasks=list(loaded.values()), limit=limit, task_manager=manager, log_samples=False,
        )
    records = {
        name: _record(name, loaded[name], output["results"][name],
                      int(output["n-samples"][name]["effective"]), shots[name])
        for name in names
    }
    result = list(records.values())
    for suite in dict.fromkeys(s for _, s, _ in expanded if s is not None):
        members = [records[t] for t, s, _ in expanded if s == suite]
        result.append(_aggregate(suite, members))
    for record in result:
        if math.isnan(record["value"]):
            log.warning("%s: %s is NaN", record["task"], record["metric"])
    return result
