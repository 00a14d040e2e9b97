#!/usr/bin/env bash
# Debian 12's Slurm (22.05) and munge, for tests/slurm (CI: one line in .ci/run before `make test`).
set -euo pipefail
if command -v sbatch >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
# The package's postinst makes /etc/munge/munge.key; make one if a minimal image skipped it.
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none; chmod 600 /etc/munge/munge.key; }
