#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/slurm: munged + slurmctld + slurmd on loopback, everything
# (config, sockets, spool, logs, pid files) under DIR, nothing in /etc changed. Needs root and Debian's slurm-wlm
# and munge packages (scripts/ci/slurm-install.sh).
#   scripts/ci/slurm-cluster.sh start DIR   # writes DIR/slurm.conf; export SLURM_CONF=DIR/slurm.conf for clients
#   scripts/ci/slurm-cluster.sh stop DIR    # stops what start started (by its pid files)
# Two nodes (tests/slurm's two-node tests): first make the namespaces with scripts/ci/netns-nodes.sh up TAG SUBNET,
#   scripts/ci/slurm-cluster.sh start DIR TAG SUBNET   # slurmctld + slurmd kit-TAG-0 in namespace kit-TAG-0 (SUBNET.1),
#                                                       # slurmd kit-TAG-1 in kit-TAG-1 (SUBNET.2); munged on a file socket
# Clients then run inside node 0's namespace: ip netns exec kit-TAG-0 sbatch ... (slurmctld listens only there).
# Every wait is bounded: a daemon that does not come up fails the start with its log's tail.
set -euo pipefail
action=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh start|stop DIR}")
cpus=${KIT_SLURM_CPUS:-$(nproc)}
tag=${3:-}
subnet=${4:-10.251.0}

# As node N: in its network namespace, with its host name (its own UTS namespace): slurmd finds its NodeName and
# slurmctld its SlurmctldHost by the host name.
# `ip netns exec` remounts /sys for the namespace (in a private mount namespace) without /sys/fs/cgroup, where
# slurmd looks for the cgroup hierarchies this process is in, even with ProctrackType=linuxproc. Mount them again
# there, as they are on the host (cgroup v2, or v1 controllers under a tmpfs); private to that mount namespace.
remount_cgroups='mountpoint -q /sys/fs/cgroup && exit 0
if grep -q "^0::" /proc/self/cgroup && [ "$(wc -l </proc/self/cgroup)" = 1 ]; then
    mount -t cgroup2 none /sys/fs/cgroup; exit 0
fi
mount -t tmpfs kit-cgroup /sys/fs/cgroup
while IFS=: read -r _ controllers _; do
    [ -n "$controllers" ] || continue
    dir=${controllers#name=}; options=$controllers
    case $controllers in name=*) options="none,$controllers" ;; esac
    mkdir -p "/sys/fs/cgroup/$dir" && mount -t cgroup -o "$options" cgroup "/sys/fs/cgroup/$dir"
done </proc/self/cgroup'
in_node() {
    local n=$1; shift
    ip netns exec "kit-$tag-$n" unshare --uts sh -c \
        'sh -c "$KIT_REMOUNT_CGROUPS" || exit 1; hostname "$0" && exec "$@"' "kit-$tag-$n" "$@"
}
export KIT_REMOUNT_CGROUPS=$remount_cgroups
client() { if [ -n "$tag" ]; then ip netns exec "kit-$tag-0" "$@"; else "$@"; fi; }

stop() {
    for pidfile in "$dir"/slurmd*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
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
# A job asking for more nodes than its partition has is refused at submission, not left pending for ever
# (Reason=PartitionNodeLimit). Real clusters: ask the admins; sbatch --test-only shows it either way.
EnforcePartLimits=ALL
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=60 State=UP
CONF
    # munged refuses root without --force; a private socket keeps it apart from a system munged.
    munged --force --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munged.seed" --key-file=/etc/munge/munge.key || fail "munged did not start"
    wait_for 10 "munged's socket" test -S "$dir/munge.socket"
    export SLURM_CONF="$dir/slurm.conf"
    if [ -n "$tag" ]; then start_two; return; fi
    slurmctld -f "$SLURM_CONF" -i || fail "slurmctld did not start"
    wait_for 30 "slurmctld answering" scontrol ping
    slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
    wait_for 60 "node localhost idle" bash -c 'sinfo -h -n localhost -o %T | grep -q idle'
    echo "slurm-cluster: up (SLURM_CONF=$SLURM_CONF)"
}

# Two nodes in network namespaces: the same settings, but the controller and node 0 at SUBNET.1, node 1 at SUBNET.2,
# and each slurmd's pid, spool and log named after its node (%n).
start_two() {
    ip netns list | grep -qw "kit-$tag-1" || fail "namespace kit-$tag-1 missing: run scripts/ci/netns-nodes.sh up $tag first"
    sed -i -e "s|^SlurmctldHost=.*|SlurmctldHost=kit-$tag-0($subnet.1)|" \
        -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$dir/d-%n|" -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$dir/slurmd-%n.pid|" \
        -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$dir/slurmd-%n.log|" -e '/^NodeName=/d' -e '/^PartitionName=/d' \
        "$dir/slurm.conf"
    cat >>"$dir/slurm.conf" <<CONF
NodeName=kit-$tag-0 NodeAddr=$subnet.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
NodeName=kit-$tag-1 NodeAddr=$subnet.2 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=ci Nodes=kit-$tag-[0-1] Default=YES MaxTime=60 State=UP
CONF
    mkdir -p "$dir/d-kit-$tag-0" "$dir/d-kit-$tag-1"
    in_node 0 slurmctld -f "$SLURM_CONF" -i || fail "slurmctld did not start"
    wait_for 30 "slurmctld answering" client scontrol ping
    in_node 0 slurmd -f "$SLURM_CONF" || fail "slurmd on kit-$tag-0 did not start"
    in_node 1 slurmd -f "$SLURM_CONF" || fail "slurmd on kit-$tag-1 did not start"
    wait_for 60 "both nodes idle" bash -c "ip netns exec kit-$tag-0 sinfo -h -o '%D %T' | grep -qx '2 idle'"
    echo "slurm-cluster: up, nodes kit-$tag-0 and kit-$tag-1 (SLURM_CONF=$SLURM_CONF; clients: ip netns exec kit-$tag-0 ...)"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
