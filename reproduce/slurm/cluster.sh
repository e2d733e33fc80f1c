#!/usr/bin/env bash
# cluster.sh - install / start / stop / inspect a real single-node SLURM
# cluster (slurmctld + slurmd + slurmdbd + mariadb + munged) on this machine.
#
#   reproduce/slurm/cluster.sh install   # apt-get the packages (skipped if present)
#   reproduce/slurm/cluster.sh start     # render configs, start daemons, wait for an idle node
#   reproduce/slurm/cluster.sh status    # which daemons are alive, sinfo, squeue
#   reproduce/slurm/cluster.sh stop      # cancel jobs, stop every daemon it started (by PID)
#   reproduce/slurm/cluster.sh env       # prints `export SLURM_CONF=...` for clients
#
# Everything (configs, munge key, database, spool, logs, pid files) lives in
# the state folder $OATS_SLURM_DIR (default /tmp/oats-slurm). Nothing under
# /etc is written. Clients (sbatch, squeue, sacct, submitit, ...) must see
# SLURM_CONF=$OATS_SLURM_DIR/etc/slurm.conf: `eval "$(cluster.sh env)"`.
#
# Knobs (environment): OATS_SLURM_DIR, OATS_SLURM_CLUSTER (oats),
# OATS_SLURM_PARTITION (debug), OATS_SLURM_ACCOUNT (oats),
# OATS_SLURM_PORT_BASE (6817: slurmctld=base, slurmd=+1, slurmdbd=+2, mariadb=+3),
# OATS_SLURM_DEF_MEM_PER_CPU (MB, 1024), OATS_SLURM_WAIT (seconds per wait step, 60),
# OATS_SLURM_CRED_EXPIRE (s, 10: also the delay before a requeued job restarts).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
DIR="$(realpath -m "${OATS_SLURM_DIR:-/tmp/oats-slurm}")"
CLUSTER="${OATS_SLURM_CLUSTER:-oats}"
PARTITION="${OATS_SLURM_PARTITION:-debug}"
ACCOUNT="${OATS_SLURM_ACCOUNT:-oats}"
PORT_BASE="${OATS_SLURM_PORT_BASE:-6817}"
DEF_MEM_PER_CPU="${OATS_SLURM_DEF_MEM_PER_CPU:-1024}"
WAIT="${OATS_SLURM_WAIT:-60}"
CRED_EXPIRE="${OATS_SLURM_CRED_EXPIRE:-10}"

CTLD_PORT=$((PORT_BASE))
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
MYSQL_PORT=$((PORT_BASE + 3))

ETC="$DIR/etc"
RUN="$DIR/run"
LOG="$DIR/log"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MYSQL_DIR="$DIR/mysql"
MYSQL_DATA="$MYSQL_DIR/data"
MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"
DB_NAME=slurm_acct_db
DB_USER=slurm

export SLURM_CONF="$ETC/slurm.conf"
# Marker put in the environment of every daemon we launch, so `stop` can find
# slurmstepd processes spawned by *our* slurmd (and nothing else).
MARKER="OATS_SLURM_DAEMON_OF=$DIR"

# daemon name -> process name (/proc/PID/comm) and pid file
DAEMONS_STOP_ORDER=(slurmd slurmctld slurmdbd mariadb munged)
declare -A COMM=([munged]=munged [mariadb]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld [slurmd]=slurmd)
declare -A LOGF=([munged]="$LOG/munged.log" [mariadb]="$LOG/mariadb.log" [slurmdbd]="$LOG/slurmdbd.log"
                 [slurmctld]="$LOG/slurmctld.log" [slurmd]="$LOG/slurmd.log")
PACKAGES=(slurm-wlm slurm-client slurmctld slurmd slurmdbd munge mariadb-server mariadb-client)
BINARIES=(sbatch squeue sinfo scontrol scancel sacct sacctmgr slurmctld slurmd slurmdbd munged munge unmunge
          mariadbd mariadb mariadb-admin mariadb-install-db)

say() { echo "[oats-slurm] $*"; }
err() { echo "[oats-slurm] ERROR: $*" >&2; }

pidfile() { echo "$RUN/$1.pid"; }

# True while PID exists and is not a zombie (our daemons are reparented to
# PID 1, which may take a moment to reap them).
pid_running() {
    local st
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# Prints the PID of daemon $1 if its pid file names a live process of the right kind.
alive_pid() {
    local f pid comm
    f="$(pidfile "$1")"
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "${COMM[$1]}" ]] && pid_running "$pid" || return 1
    echo "$pid"
}
is_alive() { alive_pid "$1" >/dev/null; }

tail_logs() {
    local name f
    for name in "$@"; do
        f="${LOGF[$name]:-$name}"
        if [[ -f "$f" ]]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2
        else
            echo "----- $f: (no log file) -----" >&2
        fi
    done
}

fail() {  # fail "message" daemon...
    local msg="$1"; shift
    err "$msg"
    tail_logs "$@"
    err "state folder: $DIR  (run '$0 stop' to clean up what was started)"
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND... : poll COMMAND every 0.5 s.
wait_for() {
    local secs="$1" what="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.5
    done
}

# wait_up NAME SECONDS COMMAND... : like wait_for, but gives up at once when
# daemon NAME has died (its pid file names a process that is gone).
wait_up() {
    local name="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs)) f pid
    f="$(pidfile "$name")"
    until "$@" >/dev/null 2>&1; do
        if [[ -s "$f" ]] && ! is_alive "$name"; then
            pid="$(tr -dc '0-9' <"$f")"
            if ! pid_running "$pid"; then err "$name (pid $pid) exited during start-up"; return 1; fi
        fi
        if ((SECONDS >= deadline)); then err "timed out after ${secs}s waiting for $name"; return 1; fi
        sleep 0.5
    done
}

# Fails if TCP port $2 (needed by daemon $1) is already taken by someone else.
check_port() {
    command -v ss >/dev/null 2>&1 || return 0
    local used
    used="$(ss -Hltnp "sport = :$2" 2>/dev/null || true)"
    if [[ -n "$used" ]]; then
        err "port $2 needed by $1 is already in use: $used"
        err "another cluster running? set OATS_SLURM_PORT_BASE (now $PORT_BASE) to use other ports"
        exit 1
    fi
}

# Run CMD detached from our session (own session via setsid), stdin from
# /dev/null, stdout/stderr to LOGFILE, every other inherited descriptor closed
# (so a daemon never holds our lock or a CI runner's pipes open), with the
# marker and SLURM_CONF in its environment. exec keeps the subshell's PID.
detached() {  # detached LOGFILE CMD...
    local out="$1"; shift
    exec </dev/null >>"$out" 2>&1
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd="${fd##*/}"
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec env "$MARKER" SLURM_CONF="$SLURM_CONF" setsid "$@"
}
# For daemons that fork into the background themselves.
launch() { (detached "$@"); }

# ---------------------------------------------------------------- install --
cmd_install() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    if ((${#missing[@]} == 0)); then
        say "packages already installed ($(slurmctld -V 2>/dev/null), munge, mariadb) - skipping"
        return 0
    fi
    say "missing: ${missing[*]} - installing ${PACKAGES[*]}"
    [[ $EUID -eq 0 ]] || { err "install needs root"; exit 1; }
    # Keep the packages' maintainer scripts from starting the system services
    # (munge, mariadb, slurm*) on their default sockets: we start our own.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# temporary, created by oats reproduce/slurm/cluster.sh install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
    if ((made_policy)); then rm -f "$policy"; trap - EXIT; fi
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || { err "still missing after install: $b"; exit 1; }
    done
    say "installed: $(slurmctld -V)"
}

# ------------------------------------------------------------------ start --
render() {  # render TEMPLATE OUT
    local tpl="$1" out="$2" tmp
    tmp="$(mktemp "$out.XXXX")"
    local sedexpr=() k v
    for k in "${!SUBST[@]}"; do
        v="${SUBST[$k]}"
        v="${v//\\/\\\\}"; v="${v//|/\\|}"; v="${v//&/\\&}"
        sedexpr+=(-e "s|@$k@|$v|g")
    done
    sed "${sedexpr[@]}" "$tpl" >"$tmp"
    if grep -v '^#' "$tmp" | grep -q '@[A-Z_]*@'; then
        err "unsubstituted placeholder in $out:"; grep -n '@[A-Z_]*@' "$tmp" >&2; rm -f "$tmp"; exit 1
    fi
    mv -f "$tmp" "$out"
}

render_configs() {
    local host hw mem real_mem cpus k v
    host="$(hostname -s 2>/dev/null || hostname)"
    hw="$(env -u SLURM_CONF slurmd -C 2>/dev/null | head -n1 || true)"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [[ -n "$mem" ]] || mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    real_mem=$((mem * 95 / 100))
    # CPU topology exactly as slurmd detects it (so the node does not get drained
    # for a mismatch); fall back to nproc.
    local node_hw=""
    for k in CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
        v="$(grep -o "\b$k=[0-9]*" <<<"$hw" || true)"
        [[ -n "$v" ]] && node_hw+="$v "
    done
    [[ "$node_hw" == *CPUs=* ]] || node_hw="CPUs=$(nproc)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_hw")"
    NODE="$host"

    if [[ ! -s "$ETC/dbpass" ]]; then
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
    fi
    declare -gA SUBST=(
        [CLUSTER]="$CLUSTER" [HOST]="$host" [PARTITION]="$PARTITION" [DIR]="$DIR"
        [CTLD_PORT]="$CTLD_PORT" [SLURMD_PORT]="$SLURMD_PORT" [DBD_PORT]="$DBD_PORT" [MYSQL_PORT]="$MYSQL_PORT"
        [MUNGE_SOCKET]="$MUNGE_SOCKET" [NODE_HW]="${node_hw% }" [REAL_MEM]="$real_mem"
        [DEF_MEM_PER_CPU]="$DEF_MEM_PER_CPU" [CRED_EXPIRE]="$CRED_EXPIRE" [DB_USER]="$DB_USER" [DB_PASS]="$(cat "$ETC/dbpass")" [DB_NAME]="$DB_NAME"
    )
    render "$HERE/slurm.conf.in" "$ETC/slurm.conf"
    render "$HERE/slurmdbd.conf.in" "$ETC/slurmdbd.conf"
    chmod 644 "$ETC/slurm.conf"
    chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a world-readable config
    : >"$ETC/plugstack.conf"          # no SPANK plugins (do not pick up /etc/slurm/plugstack.conf)
    # Shell snippet for clients.
    printf 'export SLURM_CONF=%q\n' "$ETC/slurm.conf" >"$DIR/env.sh"
    say "node $host: ${node_hw% } RealMemory=$real_mem MB (detected $mem MB), $cpus CPU(s)"
}

start_munged() {
    if is_alive munged; then say "munged already running (pid $(alive_pid munged))"; return; fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force >/dev/null
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chmod 600 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$(pidfile munged)"
    # munged forks into the background itself and writes its pid file.
    launch "$LOG/munged.out" munged --force \
        --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" --pid-file="$(pidfile munged)" \
        --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        || fail "munged failed to start" munged "$LOG/munged.out"
    munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
    wait_up munged "$WAIT" munge_ok || fail "munged did not answer on $MUNGE_SOCKET" munged "$LOG/munged.out"
    say "munged up (pid $(alive_pid munged))"
}

mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root "$@"; }

start_mariadb() {
    if is_alive mariadb; then say "mariadb already running (pid $(alive_pid mariadb))"; return; fi
    if [[ ! -d "$MYSQL_DATA/mysql" ]]; then
        say "initialising mariadb datadir $MYSQL_DATA"
        rm -rf "$MYSQL_DATA"; mkdir -p "$MYSQL_DATA"
        mariadb-install-db --no-defaults --user=root --datadir="$MYSQL_DATA" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 \
            || fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    check_port mariadb "$MYSQL_PORT"
    rm -f "$MYSQL_SOCKET" "$(pidfile mariadb)"
    # mariadbd does not daemonize: run it detached in the background; $! is its
    # PID (detached execs), and mariadbd writes the same PID to --pid-file.
    detached "$LOG/mariadb.out" mariadbd --no-defaults --user=root --datadir="$MYSQL_DATA" \
        --socket="$MYSQL_SOCKET" --pid-file="$(pidfile mariadb)" --log-error="$LOG/mariadb.log" \
        --bind-address=127.0.0.1 --port="$MYSQL_PORT" --skip-name-resolve \
        --innodb-buffer-pool-size=1024M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --max-allowed-packet=16M &
    echo $! >"$(pidfile mariadb)"
    disown || true
    wait_up mariadb "$WAIT" mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" -u root ping \
        || fail "mariadb did not come up on $MYSQL_SOCKET" mariadb "$LOG/mariadb.out"
    say "mariadb up (pid $(alive_pid mariadb), socket $MYSQL_SOCKET, 127.0.0.1:$MYSQL_PORT)"
}

setup_db() {
    local pass; pass="$(cat "$ETC/dbpass")"
    mysql_root <<SQL || fail "creating the slurm database/user failed" mariadb
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
    if is_alive slurmdbd; then say "slurmdbd already running (pid $(alive_pid slurmdbd))"; return; fi
    check_port slurmdbd "$DBD_PORT"
    rm -f "$(pidfile slurmdbd)"
    # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF; it daemonizes itself.
    launch "$LOG/slurmdbd.out" slurmdbd || fail "slurmdbd failed to start" slurmdbd "$LOG/slurmdbd.out"
    wait_up slurmdbd "$WAIT" sacctmgr -n -P list cluster format=cluster \
        || fail "slurmdbd did not answer on port $DBD_PORT" slurmdbd "$LOG/slurmdbd.out" mariadb
    say "slurmdbd up (pid $(alive_pid slurmdbd))"
}

register_accounting() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" slurmdbd
    fi
    if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="OATS test account" \
            Organization=oats >/dev/null || fail "sacctmgr add account failed" slurmdbd
    fi
    local u
    for u in root "$(id -un)"; do
        if ! sacctmgr -n -P list assoc format=user,account cluster="$CLUSTER" | grep -qx "$u|$ACCOUNT"; then
            sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
                || fail "sacctmgr add user $u failed" slurmdbd
        fi
    done
}

start_slurmctld() {
    if is_alive slurmctld; then say "slurmctld already running (pid $(alive_pid slurmctld))"; return; fi
    check_port slurmctld "$CTLD_PORT"
    rm -f "$(pidfile slurmctld)"
    launch "$LOG/slurmctld.out" slurmctld -f "$SLURM_CONF" \
        || fail "slurmctld failed to start" slurmctld "$LOG/slurmctld.out"
    wait_up slurmctld "$WAIT" bash -c 'scontrol ping | grep -q "is UP"' \
        || fail "slurmctld did not come up on port $CTLD_PORT" slurmctld "$LOG/slurmctld.out" slurmdbd
    say "slurmctld up (pid $(alive_pid slurmctld))"
}

start_slurmd() {
    if is_alive slurmd; then say "slurmd already running (pid $(alive_pid slurmd))"; return; fi
    check_port slurmd "$SLURMD_PORT"
    rm -f "$(pidfile slurmd)"
    launch "$LOG/slurmd.out" slurmd -f "$SLURM_CONF" -N "$NODE" \
        || fail "slurmd failed to start" slurmd "$LOG/slurmd.out"
    wait_up slurmd "$WAIT" is_alive slurmd || fail "slurmd exited" slurmd "$LOG/slurmd.out"
    say "slurmd up (pid $(alive_pid slurmd))"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

wait_node() {
    local deadline=$((SECONDS + WAIT)) st resumed=0
    while ! node_ready; do
        st="$(node_state)"
        if [[ "$st" == drain* || "$st" == down* ]] && ((!resumed)); then
            # Left drained/down by an earlier unclean stop: resume it once.
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            scontrol show node "$NODE" >&2 || true
            fail "node $NODE not idle after ${WAIT}s (state: ${st:-unknown})" slurmd slurmctld
        fi
        sleep 0.5
    done
}

all_alive() {
    local d
    for d in "${DAEMONS_STOP_ORDER[@]}"; do is_alive "$d" || return 1; done
}

cmd_start() {
    local t0=$SECONDS
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || { err "$b not found - run '$0 install' first"; exit 1; }
    done
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 120 9 || { err "another cluster.sh holds $DIR/.lock"; exit 1; }
    if all_alive; then
        say "already running (state folder $DIR)"
        sinfo 2>/dev/null || true
        say "clients need: export SLURM_CONF=$SLURM_CONF"
        return 0
    fi
    # Fail before starting anything if a port we need is taken.
    is_alive mariadb || check_port mariadb "$MYSQL_PORT"
    is_alive slurmdbd || check_port slurmdbd "$DBD_PORT"
    is_alive slurmctld || check_port slurmctld "$CTLD_PORT"
    is_alive slurmd || check_port slurmd "$SLURMD_PORT"
    mkdir -p "$ETC" "$RUN" "$LOG" "$DIR/spool/slurmctld" "$DIR/spool/slurmd" "$MYSQL_DIR"
    mkdir -p "$MUNGE_DIR"
    chmod 755 "$DIR" "$ETC" "$RUN" "$LOG"
    chmod 755 "$MUNGE_DIR"   # socket must be reachable; the key itself is 0600
    render_configs
    start_munged
    start_mariadb
    setup_db
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    wait_node
    sinfo
    say "cluster '$CLUSTER' up in $((SECONDS - t0))s; state/logs in $DIR"
    say "clients need: export SLURM_CONF=$SLURM_CONF   (or: source $DIR/env.sh)"
}

# ------------------------------------------------------------------- stop --
# Send TERM to PID, wait up to $2 seconds, then KILL.
stop_pid() {
    local pid="$1" secs="$2" name="$3" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + secs))
    while pid_running "$pid"; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) did not exit after ${secs}s - sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

# slurmstepd processes launched by our slurmd carry $MARKER in their environment.
our_stepds() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "$MARKER" && echo "${p#/proc/}"
    done
    return 0
}

cmd_stop() {
    if [[ ! -d "$DIR" ]]; then say "nothing to stop ($DIR does not exist)"; return 0; fi
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 120 9 || { err "another cluster.sh holds $DIR/.lock"; exit 1; }
    local d pid jobs
    # 1. cancel every job so no job processes outlive the cluster.
    if is_alive slurmctld && [[ -f "$SLURM_CONF" ]]; then
        jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            if is_alive slurmd; then
                wait_for 40 "jobs to end" bash -c '[[ -z "$(squeue -h -t R,CG,S -o %A 2>/dev/null)" ]]' \
                    || say "some jobs still running/completing; continuing"
            fi
        fi
    fi
    # 2. daemons, in reverse dependency order.
    for d in "${DAEMONS_STOP_ORDER[@]}"; do
        if pid="$(alive_pid "$d")"; then
            say "stopping $d (pid $pid)"
            stop_pid "$pid" 60 "$d"
        fi
        rm -f "$(pidfile "$d")"
    done
    # 3. leftover slurmstepd of our slurmd (only those carrying our marker).
    for pid in $(our_stepds); do
        say "stopping leftover slurmstepd (pid $pid)"
        stop_pid "$pid" 10 slurmstepd
    done
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MYSQL_SOCKET"
    say "stopped (state kept in $DIR; remove it for a fresh start)"
}

# ----------------------------------------------------------------- status --
cmd_status() {
    local d pid up=0
    echo "state folder: $DIR"
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if pid="$(alive_pid "$d")"; then
            printf '  %-10s running (pid %s)\n' "$d" "$pid"; up=$((up + 1))
        else
            printf '  %-10s not running\n' "$d"
        fi
    done
    if is_alive slurmctld && [[ -f "$SLURM_CONF" ]]; then
        echo "SLURM_CONF=$SLURM_CONF"
        sinfo || true
        squeue || true
    fi
    ((up == 5)) || return 3
}

cmd_env() { printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"; }

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 {install|start|stop|status|env|restart}" >&2; exit 2 ;;
esac
