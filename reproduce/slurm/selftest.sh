#!/usr/bin/env bash
# selftest.sh - check that the cluster started by cluster.sh behaves like a real
# SLURM cluster for what OATS needs: completed / failed / cancelled / requeued
# jobs as seen by sacct, job arrays, --mem/--time, rejection of --gres=gpu.
#
#   reproduce/slurm/cluster.sh start
#   reproduce/slurm/selftest.sh                 # sbatch/sacct checks (~1 min)
#   reproduce/slurm/selftest.sh /path/python    # + submitit checks with that python
#
# Exits non-zero on the first failed check. Uses the state folder of cluster.sh
# ($OATS_SLURM_DIR, default /tmp/oats-slurm) and a scratch folder under it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
DIR="$(realpath -m "${OATS_SLURM_DIR:-/tmp/oats-slurm}")"
export SLURM_CONF="$DIR/etc/slurm.conf"
PY="${1:-}"

"$HERE/cluster.sh" status >/dev/null || { echo "cluster not running: run $HERE/cluster.sh start" >&2; exit 1; }

WORK="$(mktemp -d "$DIR/selftest.XXXX")"
cd "$WORK"
echo "scratch folder: $WORK"

pass=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
die() { echo "FAIL: $*" >&2; exit 1; }

# State of the job allocation as sacct reports it (first line, no steps).
# Right after a job ends slurmdbd may hold a partial record (JobName
# "allocation", empty Timelimit) until the job-start message is stored: treat
# that as "not yet".
acct_state() {
    sacct -n -X -P -j "$1" -o State,Timelimit 2>/dev/null | head -n1 \
        | awk -F'|' '$2 != "" {split($1, a, " "); print a[1]}'
}
wait_acct() {  # wait_acct JOBID STATE-REGEX [SECONDS]
    local j="$1" want="$2" secs="${3:-90}" deadline st
    deadline=$((SECONDS + secs))
    while :; do
        st="$(acct_state "$j")"
        [[ "$st" =~ ^($want)$ ]] && return 0
        ((SECONDS < deadline)) || { echo "job $j: sacct state '$st', wanted $want" >&2; return 1; }
        sleep 1
    done
}
wait_running() {
    local j="$1" deadline=$((SECONDS + 60))
    until [[ "$(squeue -h -j "$j" -o %T 2>/dev/null)" == RUNNING ]]; do
        ((SECONDS < deadline)) || die "job $j never started running"
        sleep 0.5
    done
}
show() { sacct -j "$1" --format=JobID,JobName,State%20,ExitCode "${@:2}"; }

# 1. completed
j=$(sbatch --parsable --wrap 'hostname')
wait_acct "$j" COMPLETED || die "hostname job"
show "$j"; echo "output: $(cat "slurm-$j.out")"
ok "sbatch --wrap hostname -> COMPLETED"

# 2. failed
j=$(sbatch --parsable --wrap 'exit 1')
wait_acct "$j" FAILED || die "exit 1 job"
show "$j"
ok "exit 1 -> FAILED"

# 3. cancelled while running
j=$(sbatch --parsable --wrap 'sleep 600')
wait_running "$j"; scancel "$j"
wait_acct "$j" CANCELLED || die "scancel job"
show "$j"
ok "scancel -> CANCELLED"

# 4. requeue while running: with and without --requeue (JobRequeue=1 makes
#    batch jobs requeueable by default). The rerun sees SLURM_RESTART_COUNT=1.
cat >requeue.sh <<'EOF'
#!/bin/bash
echo "run at $(date +%T) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-unset}"
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 0; fi
sleep 600
EOF
for flag in --requeue ""; do
    t0=$SECONDS
    j=$(sbatch --parsable $flag --open-mode=append -o "rq-%j.out" requeue.sh)
    wait_running "$j"; sleep 1
    scontrol requeue "$j"
    wait_acct "$j" COMPLETED 120 || die "requeued job $j did not complete"
    show "$j" --duplicates
    cat "rq-$j.out"
    grep -q 'SLURM_RESTART_COUNT=1' "rq-$j.out" || die "rerun did not see SLURM_RESTART_COUNT=1"
    sacct -n -D -X -P -j "$j" -o State | grep -q REQUEUED || die "no REQUEUED record"
    ok "scontrol requeue (sbatch ${flag:-without --requeue}) -> REQUEUED then rerun COMPLETED, $((SECONDS - t0))s"
done

# 5. job array
j=$(sbatch --parsable --array=0-2 -o 'arr-%A_%a.out' --wrap 'echo task $SLURM_ARRAY_TASK_ID')
for t in 0 1 2; do wait_acct "${j}_$t" COMPLETED || die "array task $t"; done
show "$j"; cat arr-"$j"_*.out
ok "--array=0-2 -> 3 tasks COMPLETED"

# 6. --mem / --time
j=$(sbatch --parsable --mem=500M --time=00:05:00 --cpus-per-task=1 \
    --wrap 'echo mem=$SLURM_MEM_PER_NODE cpus=$SLURM_CPUS_PER_TASK')
wait_acct "$j" COMPLETED || die "--mem/--time job"
sacct -j "$j" -X --format=JobID,State,ReqMem,Timelimit,ExitCode
echo "output: $(cat "slurm-$j.out")"
ok "--mem=500M --time=00:05:00 accepted"

# 7. requests the node cannot satisfy are refused at submission
if out=$(sbatch --gres=gpu:1 --wrap hostname 2>&1); then die "--gres=gpu was accepted: $out"; fi
echo "sbatch --gres=gpu:1 -> $out"
ok "--gres=gpu rejected (no GPUs configured)"
if out=$(sbatch --mem=1000G --wrap hostname 2>&1); then die "--mem=1000G was accepted: $out"; fi
echo "sbatch --mem=1000G -> $out"
ok "--mem beyond RealMemory rejected"

# 8. submitit (optional)
if [[ -n "$PY" ]]; then
    "$PY" "$HERE/submitit_check.py" "$WORK/submitit" || die "submitit check"
    ok "submitit submit / map_array / cancel / preemption-requeue"
fi

echo "$pass passed, 0 failed"
