"""The callable a SLURM job runs (kept apart so only the SLURM launcher imports submitit)."""
from __future__ import annotations

from pathlib import Path

import submitit


class RunJob(submitit.helpers.Checkpointable):
    """Runs one table cell. On preemption or timeout submitit calls ``checkpoint`` and requeues
    the same call; the pipeline then resumes from the per-block checkpoint in ``out_dir``."""

    def __call__(self, config: dict, out_dir: str, wandb_cfg: dict) -> str:
        from .launch import execute

        env = submitit.JobEnvironment()
        print(f"job {env.job_id} (array task {env.array_task_id}) -> {out_dir}", flush=True)
        execute(config, out_dir, wandb_cfg or None)
        return str(Path(out_dir) / "result.json")
