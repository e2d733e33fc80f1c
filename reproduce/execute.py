"""Execute one prepared run: in this process, or in a new one with the run's runtime environment.

The local launcher, the SLURM job and the worker process all come here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from oats import runtime

from .tables import REPO

_ERROR = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


class RunFailed(RuntimeError):
    """A run that failed in its own process (its traceback is in the run folder's error.log)."""


def error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback (what a person wants to read first)."""
    hits = [line.strip() for line in text.splitlines() if _ERROR.match(line.strip())]
    return hits[-1] if hits else ""


def execute(config: dict, out_dir: str | Path, wandb_cfg: Mapping[str, Any] | None = None) -> dict:
    """One run: in this process, or in a new one when its ``runtime`` block asks for threads, a kernel
    ISA or an MKL path that this process does not have (they are fixed when torch loads)."""
    rt = runtime.settings(config.get("runtime"))
    if not runtime.needs_new_process(rt):
        return execute_here(config, out_dir, wandb_cfg)
    out_dir = Path(out_dir)
    env = {**os.environ, **runtime.environment(rt)}
    cmd = [sys.executable, "-m", "reproduce.worker", str(out_dir), json.dumps(dict(wandb_cfg or {}))]
    proc = subprocess.run(cmd, env=env, cwd=REPO)
    if proc.returncode:
        log = out_dir / "error.log"
        text = log.read_text() if log.exists() else ""
        raise RunFailed(error_line(text) or f"worker exited with code {proc.returncode}")
    return json.loads((out_dir / "result.json").read_text())


def execute_here(config: dict, out_dir: str | Path, wandb_cfg: Mapping[str, Any] | None = None) -> dict:
    """One run, in this process: the pipeline, then (optionally) its wandb log."""
    from oats.pipeline import run as run_pipeline

    from .wandb_log import log_run

    result = run_pipeline(config, out_dir)
    if wandb_cfg:
        log_run(result, Path(out_dir), wandb_cfg)
    return result
