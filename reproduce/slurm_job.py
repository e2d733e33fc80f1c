"""The callable a SLURM job runs (kept apart so only the SLURM launcher imports submitit)."""
from __future__ import annotations

import os
from pathlib import Path

import submitit

from .execute import execute


class RunJob(submitit.helpers.Checkpointable):
    """Runs one table cell. On preemption or timeout submitit calls ``checkpoint`` and requeues
    the same call; the pipeline then resumes from the per-block checkpoint in ``out_dir``."""

    def __call__(self, config: dict, out_dir: str, wandb_cfg: dict) -> str:
        env = submitit.JobEnvironment()
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"job {env.job_id} (restart {restarts}) -> {out_dir}", flush=True)
        with open(Path(out_dir) / "slurm_jobs.txt", "a") as f:  # which SLURM job computed this run
            f.write(f"{env.job_id} {os.environ.get('SLURM_JOB_ID', '')} restart={restarts}\n")
        execute(config, out_dir, wandb_cfg or None)
        return str(Path(out_dir) / "result.json")
