"""Launchers: run the pending runs of a table here (local) or as a SLURM job array (submitit)."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from oats import runtime
from oats.io import atomic_write_json, atomic_write_text

from .tables import REPO, Run


@dataclass
class Failure:
    run: Run
    reason: str
    log: Path | None


_ERROR = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


def error_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback (what a person wants to read first)."""
    hits = [line.strip() for line in text.splitlines() if _ERROR.match(line.strip())]
    return hits[-1] if hits else ""


def run_dir(results_dir: Path, run: Run) -> Path:
    return results_dir / "runs" / run.run_id


class RunFailed(RuntimeError):
    """A run that failed in its own process (its traceback is in the run folder's error.log)."""


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


def prepare(results_dir: Path, run: Run) -> Path:
    out = run_dir(results_dir, run)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", {"run_id": run.run_id, "row": run.row, "col": run.col,
                                         "overrides": list(run.overrides), "config": run.config})
    (out / "error.log").unlink(missing_ok=True)
    return out


def launch_local(runs: list[Run], results_dir: Path, wandb_cfg: Mapping[str, Any] | None = None) -> list[Failure]:
    """Run each pending run in turn; a failure is logged to its folder and does not stop the others."""
    failures = []
    bar = tqdm(runs, desc="runs", unit="run")
    for run in bar:
        bar.set_postfix_str(f"{run.row} | {run.col}" + (f" | {run.rep}" if run.rep else ""))
        out = prepare(results_dir, run)
        try:
            execute(run.config, out, wandb_cfg)
        except Exception as e:  # noqa: BLE001 - reported, the other runs go on
            log = out / "error.log"
            if not isinstance(e, RunFailed):  # a worker process wrote its own traceback there
                atomic_write_text(log, traceback.format_exc())
            failures.append(Failure(run, f"{type(e).__name__}: {e}", log))
            tqdm.write(f"run {run.run_id} ({run.row} | {run.col}) failed: {type(e).__name__}: {e} [log: {log}]")
        gc.collect()
    return failures


def launch_slurm(runs: list[Run], results_dir: Path, lcfg: Mapping[str, Any], table: str,
                 wandb_cfg: Mapping[str, Any] | None = None) -> list[Failure]:
    """Submit the runs as one SLURM job array with submitit and wait, printing job states.

    A preempted or timed-out job is requeued by submitit (``RunJob.checkpoint``) and resumes
    from the per-block pruning checkpoint in its run folder.
    """
    import submitit

    from .slurm_job import RunJob

    folder = results_dir / "slurm" / table
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=lcfg.get("cluster") or None)
    params: dict[str, Any] = {
        "name": f"oats-{table}",
        "timeout_min": int(lcfg["timeout_min"]),
        "mem_gb": lcfg["mem_gb"],
        "cpus_per_task": int(lcfg["cpus_per_task"]),
        "slurm_array_parallelism": int(lcfg["array_parallelism"]),
        "stderr_to_stdout": True,
    }
    if lcfg.get("partition"):
        params["slurm_partition"] = lcfg["partition"]
    if lcfg.get("gpus_per_node"):
        params["gpus_per_node"] = int(lcfg["gpus_per_node"])
    if lcfg.get("additional_parameters"):
        params["slurm_additional_parameters"] = dict(lcfg["additional_parameters"])
    executor.update_parameters(**params)
    outs = [str(prepare(results_dir, r)) for r in runs]
    jobs = executor.map_array(RunJob(), [r.config for r in runs], outs, [dict(wandb_cfg or {})] * len(runs))
    print(f"submitted {len(jobs)} job(s) as array {jobs[0].job_id.split('_')[0]} (logs in {folder})")
    poll = float(lcfg.get("poll_s", 10))
    last = None
    while True:
        states = Counter(j.state for j in jobs)
        line = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')}] jobs: {line}", flush=True)
            last = line
        if all(j.done() for j in jobs):
            break
        time.sleep(poll)
    failures = []
    for job, run, out in zip(jobs, runs, outs):
        if (Path(out) / "result.json").exists():
            continue
        try:
            job.result()
            reason = "finished without result.json"
        except Exception as e:  # noqa: BLE001
            reason = f"{job.state}: {error_line(str(e)) or type(e).__name__}"
        failures.append(Failure(run, reason, job.paths.stdout))
    return failures
