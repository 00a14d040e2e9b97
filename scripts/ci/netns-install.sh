#!/usr/bin/env bash
# What tests/multinode needs on Debian 12 (root): `ip` (iproute2) for the network namespaces and the veth pair,
# `unshare`/`mountpoint` (util-linux) for each node's own host name and the Slurm nodes' cgroup mounts.
set -euo pipefail
if command -v ip >/dev/null && command -v unshare >/dev/null && command -v mountpoint >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends iproute2 util-linux >/dev/null
