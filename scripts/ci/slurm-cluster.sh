#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/slurm: munged + slurmctld + slurmd on loopback, everything
# (config, sockets, spool, logs, pid files) under DIR, nothing in /etc changed. Needs root and Debian's slurm-wlm
# and munge packages (scripts/ci/slurm-install.sh).
#   scripts/ci/slurm-cluster.sh start DIR   # writes DIR/slurm.conf; export SLURM_CONF=DIR/slurm.conf for clients
#   scripts/ci/slurm-cluster.sh stop DIR    # stops what start started (by its pid files)
# Every wait is bounded: a daemon that does not come up fails the start with its log's tail.
set -euo pipefail
action=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh start|stop DIR}")
cpus=${KIT_SLURM_CPUS:-$(nproc)}

stop() {
    for name in slurmd slurmctld munged; do
        pidfile="$dir/$name.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

fail() { echo "slurm-cluster: $1" >&2; for f in "$dir"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done; stop; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$what did not happen within ${seconds} s"
}

start() {
    [ "$(id -u)" = 0 ] || { echo "slurm-cluster: needs root (slurmd runs jobs as their users)" >&2; exit 1; }
    for cmd in munged slurmctld slurmd sbatch; do
        command -v "$cmd" >/dev/null || { echo "slurm-cluster: $cmd not found: run scripts/ci/slurm-install.sh" >&2; exit 1; }
    done
    mkdir -p "$dir/ctld" "$dir/d"
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=kit-ci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${KIT_SLURM_CTLD_PORT:-16817}
SlurmdPort=${KIT_SLURM_D_PORT:-16818}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=60 State=UP
CONF
    # munged refuses root without --force; a private socket keeps it apart from a system munged.
    munged --force --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munged.seed" --key-file=/etc/munge/munge.key || fail "munged did not start"
    wait_for 10 "munged's socket" test -S "$dir/munge.socket"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i || fail "slurmctld did not start"
    wait_for 30 "slurmctld answering" scontrol ping
    slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
    wait_for 60 "node localhost idle" bash -c 'sinfo -h -n localhost -o %T | grep -q idle'
    echo "slurm-cluster: up (SLURM_CONF=$SLURM_CONF)"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
