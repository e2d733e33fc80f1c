"""The smoke table through the SLURM launcher on a real single-node cluster (reproduce/slurm/cluster.sh).

One run fails on purpose (a model path that does not exist) and one long run is requeued
(``scontrol requeue``) while it runs; it must resume from its per-block checkpoint. The
other runs' results must be gathered. Needs root and Debian's slurm packages (installed by
``cluster.sh install``); skipped with the reason where that is not possible.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reproduce.store import RunStore
from reproduce.tables import TableSpec, expand

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "reproduce" / "slurm" / "cluster.sh"

TABLE = """
name: smoke_slurm
kind: table
title: SLURM launcher check (one failing run, one requeued run)
base: [model=tiny-random-llama, data=smoke, eval=smoke]
rows:
  Wanda: [method=wanda]
  OATS: [method=oats, method.iterations=5]
  Broken: [method=wanda, model.name=/nonexistent/model]
  Long: [model=smollm2-135m, method=oats, method.iterations=3, method.svd=subspace, data=ci, data.nsamples=4, eval=none]
cols:
  "50%": [compression=0.5]
metrics: [model/compression]
expected: null
"""

pytestmark = pytest.mark.slow


def sh(*args: str, env=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the test cluster needs root and apt-get")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "OATS_SLURM_DIR": str(state)}
    install = sh("bash", str(CLUSTER), "install", env=env, check=False, timeout=900)
    if install.returncode != 0:
        pytest.skip(f"could not install slurm packages: {install.stderr[-500:]}")
    start = sh("bash", str(CLUSTER), "start", env=env, check=False)
    assert start.returncode == 0, start.stdout + start.stderr
    env["SLURM_CONF"] = str(state / "etc" / "slurm.conf")
    try:
        yield env
    finally:
        sh("bash", str(CLUSTER), "stop", env=env, check=False)


def requeue_when_checkpointed(run_dir: Path, env: dict, done: dict, stop: threading.Event) -> None:
    """Requeue the run's SLURM job once it has checkpointed two blocks (it then resumes from there)."""
    state = run_dir / "checkpoint" / "state.json"
    while not stop.is_set():
        try:
            if json.loads(state.read_text())["next_block"] >= 2:
                job = (run_dir / "slurm_jobs.txt").read_text().split()[0]
                sh("scontrol", "requeue", job, env=env)
                done["job"] = job
                return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.5)


def test_smoke_table_on_slurm_with_failure_and_requeue(cluster, tmp_path):
    conf = tmp_path / "conf" / "table"
    conf.mkdir(parents=True)
    (conf / "smoke_slurm.yaml").write_text(TABLE)
    results = tmp_path / "results"
    spec = TableSpec.from_config(__import__("yaml").safe_load(TABLE))
    runs = {r.row: r for r in expand(spec)}
    store = RunStore(results)
    long_dir = store.folder(runs["Long"].run_id)

    requeued: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=requeue_when_checkpointed, args=(long_dir, cluster, requeued, stop))
    watcher.start()
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "reproduce" / "run.py"), "table=smoke_slurm", "launcher=slurm_local",
             f"results_dir={results}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "wandb.mode=disabled",
             f"hydra.run.dir={tmp_path / 'hydra'}"],
            capture_output=True, text=True, env=cluster, timeout=1200)
    finally:
        stop.set()
        watcher.join()
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    assert proc.returncode == 1, "a failed run must make the table run exit non-zero"
    assert "FAILED run" in out and "Broken" in out and "log:" in out and "ModelNotAvailableError" in out
    assert "jobs:" in out  # job states were shown while waiting
    for row in ("Wanda", "OATS", "Long"):
        assert store.done(runs[row].run_id), row
    assert not store.done(runs["Broken"].run_id)
    table = (results / "tables" / "smoke_slurm.csv").read_text()
    assert table.count("missing") == 1

    assert requeued.get("job"), "the long run was never requeued"
    long_result = json.loads((long_dir / "result.json").read_text())
    assert long_result["compression"]["layers"] == 30 * 7  # all blocks, the first ones from the checkpoint
    attempts = (long_dir / "slurm_jobs.txt").read_text().splitlines()
    assert len(attempts) == 2 and attempts[1].endswith("restart=1"), attempts
    for _ in range(60):  # slurmdbd records the final state a little after the job's own files appear
        sacct = sh("sacct", "-j", requeued["job"], "--duplicates", "-X", "-n", "-o", "JobID,State", env=cluster).stdout
        if "COMPLETED" in sacct:
            break
        time.sleep(1)
    print(sacct)
    assert "REQUEUED" in sacct and "COMPLETED" in sacct
    failed = sh("sacct", "-X", "-n", "-o", "JobID,JobName,State", "-S", "now-1hour", env=cluster).stdout
    print(failed)
    assert "FAILED" in failed
