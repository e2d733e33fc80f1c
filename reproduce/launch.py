"""Launchers: run the pending runs of a table here (local) or as a SLURM job array (submitit)."""
from __future__ import annotations

import gc
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from oats.io import atomic_write_text

from .execute import RunFailed, error_line, execute
from .store import RunStore
from .tables import Run


@dataclass
class Failure:
    run: Run
    reason: str
    log: Path | None


def launch_local(runs: list[Run], results_dir: Path, wandb_cfg: Mapping[str, Any] | None = None,
                 rerun: bool = False) -> list[Failure]:
    """Run each pending run in turn; a failure is logged to its folder and does not stop the others.

    A run that another live process has claimed (the same table started twice, say) is skipped
    (:meth:`RunStore.claim`), and so is one finished since this process planned, unless ``rerun``."""
    failures = []
    store = RunStore(results_dir)
    bar = tqdm(runs, desc="runs", unit="run")
    for run in bar:
        bar.set_postfix_str(f"{run.row} | {run.col}" + (f" | {run.rep}" if run.rep else ""))
        holder = store.claim(run.run_id)
        if holder is not None:
            tqdm.write(f"run {run.run_id} ({run.row} | {run.col}) is being run by {holder}: skipped here "
                       f"(if that process is gone, delete {store.claim_path(run.run_id)})")
            continue
        try:
            if store.done(run.run_id) and not rerun:  # finished by another process since this one planned
                continue
            out = store.prepare(run)
            try:
                execute(run.config, out, wandb_cfg)
            except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                log = out / "error.log"
                if not isinstance(e, RunFailed):  # a worker process wrote its own traceback there
                    atomic_write_text(log, traceback.format_exc())
                failures.append(Failure(run, f"{type(e).__name__}: {e}", log))
                tqdm.write(f"run {run.run_id} ({run.row} | {run.col}) failed: {type(e).__name__}: {e} [log: {log}]")
        finally:
            store.release(run.run_id)
        gc.collect()
    return failures


def launch_slurm(runs: list[Run], results_dir: Path, lcfg: Mapping[str, Any], table: str,
                 wandb_cfg: Mapping[str, Any] | None = None) -> list[Failure]:
    """Submit the runs as one SLURM job array with submitit and wait, printing job states.

    A preempted or timed-out job is requeued by submitit (``RunJob.checkpoint``) and resumes
    from the per-block pruning checkpoint in its run folder.
    """
    import submitit

    from .slurm_job import RunJob  # only the SLURM launcher imports submitit

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
    store = RunStore(results_dir)
    outs = [str(store.prepare(r)) for r in runs]
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
