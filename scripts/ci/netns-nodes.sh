#!/usr/bin/env bash
# Two "hosts" on this machine for tests/multinode: two network namespaces joined by a veth pair, each with its own
# address, hostname file and interface, so torchrun's c10d rendezvous and gloo really cross a network between them.
#   scripts/ci/netns-nodes.sh up TAG [SUBNET]   # namespaces kit-TAG-0 and kit-TAG-1, hosts kit-TAG-0/1
#   scripts/ci/netns-nodes.sh down TAG          # kills every process inside them (by pid), removes them
# SUBNET: the first three octets of a private /24 used only between these two namespaces (default 10.251.0):
# node 0 is SUBNET.1 (and SUBNET.101, named kit-TAG-0-data), node 1 is SUBNET.2, both on an interface named kit0
# (GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME=kit0).
# Nothing is routed out: the namespaces have no default route and no link to the host's interfaces.
# `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts for what it starts; run a node's command with
# `ip netns exec kit-TAG-N unshare --uts sh -c 'hostname kit-TAG-N; exec ...'` so its hostname is its own, which is
# how torchrun decides which node hosts the rendezvous store (the endpoint host must match node 0's hostname).
set -euo pipefail
action=${1:?usage: netns-nodes.sh up|down TAG [SUBNET]}
tag=${2:?usage: netns-nodes.sh up|down TAG [SUBNET]}
subnet=${3:-10.251.0}
[ "${#tag}" -le 8 ] || { echo "netns-nodes: TAG '$tag' is longer than 8 characters (interface names max 15)" >&2; exit 2; }

down() {
    for n in 0 1; do
        ns="kit-$tag-$n"
        if ip netns list | grep -qw "$ns"; then
            # Every process of that "node", by pid; then the namespace (its veth end goes with it).
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
            ip netns del "$ns" 2>/dev/null || true
        fi
        rm -rf "/etc/netns/$ns"
    done
    ip link del "kv-$tag-0" 2>/dev/null || true
}

up() {
    [ "$(id -u)" = 0 ] || { echo "netns-nodes: needs root (network namespaces)" >&2; exit 1; }
    down
    trap 'down' ERR
    for n in 0 1; do
        ns="kit-$tag-$n"
        ip netns add "$ns"
        mkdir -p "/etc/netns/$ns"
        printf '127.0.0.1 localhost\n%s.1 kit-%s-0\n%s.2 kit-%s-1\n%s.101 kit-%s-0-data\n' \
            "$subnet" "$tag" "$subnet" "$tag" "$subnet" "$tag" > "/etc/netns/$ns/hosts"
    done
    ip link add "kv-$tag-0" type veth peer name "kv-$tag-1"
    for n in 0 1; do
        ns="kit-$tag-$n"
        ip link set "kv-$tag-$n" netns "$ns"
        ip -n "$ns" link set "kv-$tag-$n" name kit0
        ip -n "$ns" addr add "$subnet.$((n + 1))/24" dev kit0
        ip -n "$ns" link set kit0 up
        ip -n "$ns" link set lo up
    done
    # A second address on node 0 with its own name, as a node's InfiniBand address would be: the rendezvous can be
    # named by it (KIT_RDZV_HOST=kit-TAG-0-data), and a test can make it unreachable from node 1 alone.
    ip -n "kit-$tag-0" addr add "$subnet.101/24" dev kit0
    echo "netns-nodes: kit-$tag-0 ($subnet.1) and kit-$tag-1 ($subnet.2) up, interface kit0"
}

case $action in
    up) up ;;
    down) down ;;
    *) echo "usage: netns-nodes.sh up|down TAG [SUBNET]" >&2; exit 2 ;;
esac
