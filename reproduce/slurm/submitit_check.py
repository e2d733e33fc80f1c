"""Check that submitit works against the cluster started by cluster.sh.

Usage (SLURM_CONF must point at the cluster, see ``cluster.sh env``)::

    python reproduce/slurm/submitit_check.py /tmp/oats-slurm/submitit-check

Submits a function, a 4-task ``map_array``, a job that is cancelled and a
Checkpointable job that is "preempted" (SIGTERM + USR2, as submitit's own
``_interrupt`` does) and must be requeued by submitit and rerun. Exits 1 on
the first mismatch.
"""

import os
import sys
import time

import submitit


def add(a, b):
    return a + b, os.environ.get("SLURM_JOB_ID")


def square(x):
    return x * x


def sleeper():
    time.sleep(600)


class Resumable(submitit.helpers.Checkpointable):
    def __call__(self):
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts is None:
            time.sleep(600)  # first run: wait to be preempted
        return f"rerun SLURM_RESTART_COUNT={restarts}"


def wait_state(job, state, timeout=60):
    deadline = time.time() + timeout
    while job.state != state:
        if time.time() > deadline:
            raise SystemExit(f"job {job.job_id} never reached {state} (state {job.state})")
        time.sleep(0.5)


def check(cond, msg):
    print(("ok: " if cond else "MISMATCH: ") + msg)
    if not cond:
        raise SystemExit(1)


def main(folder):
    ex = submitit.AutoExecutor(folder=os.path.join(folder, "%j"))
    check(ex.cluster == "slurm", f"AutoExecutor picked {ex.cluster!r}")
    ex.update_parameters(slurm_partition="debug", timeout_min=5, cpus_per_task=1, mem_gb=1)

    t = time.time()
    job = ex.submit(add, 2, 3)
    res = job.result()
    check(res[0] == 5, f"submit(add, 2, 3) -> {res} in {time.time() - t:.1f}s (job {job.job_id})")
    # job.state is refreshed lazily from sacct; force a fresh sacct call
    state = job.get_info(mode="force").get("State")
    check(state == "COMPLETED", f"sacct state of job {job.job_id}: {state}")

    t = time.time()
    jobs = ex.map_array(square, [0, 1, 2, 3])
    res = [j.result() for j in jobs]
    check(res == [0, 1, 4, 9], f"map_array -> {res} ids {[j.job_id for j in jobs]} in {time.time() - t:.1f}s")

    j = ex.submit(sleeper)
    wait_state(j, "RUNNING")
    j.cancel()
    deadline = time.time() + 90
    while not j.done() and time.time() < deadline:
        time.sleep(1)
    check(j.state.startswith("CANCELLED"), f"cancelled job {j.job_id}: state {j.state!r}, done={j.done()}")
    try:
        j.result()
        check(False, "result() of a cancelled job returned")
    except submitit.core.utils.UncompletedJobError as e:
        check(True, f"result() of cancelled job raised UncompletedJobError: {str(e).splitlines()[0][:120]}")

    t = time.time()
    j = ex.submit(Resumable())
    wait_state(j, "RUNNING")
    time.sleep(3)  # let submitit install its signal handlers
    j._interrupt()  # preemption: SIGTERM then USR2 -> checkpoint + scontrol requeue
    res = j.result()
    check(res == "rerun SLURM_RESTART_COUNT=1",
          f"preempted Checkpointable job {j.job_id} -> {res!r} in {time.time() - t:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/oats-slurm/submitit-check")
