#!/usr/bin/env bash
# Make the CPU base image for CI locally, from Debian's packages: no image registry is reachable on the CI
# machines, so `FROM debian:bookworm-slim` cannot be pulled. debootstrap a minimal Debian 12 with Python 3.11
# (the same suite as Dockerfile.cpu's default base) and `docker import` it under a local tag.
# Idempotent: an existing image with that tag is kept. Prints the tag on stdout.
# Needs root, debootstrap (installed here when missing) and a running engine (docker-engine.sh's env).
set -euo pipefail

TAG="${CKIT_CPU_BASE_TAG:-ckit-ci/bookworm-python:3.11}"
SUITE="${CKIT_CPU_BASE_SUITE:-bookworm}"
MIRROR="${CKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="${CKIT_CPU_BASE_WORK:-/var/tmp/ckit-cpu-base}"

log() { echo "docker-cpu-base: $*" >&2; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already present"
    echo "$TAG"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get install -y -qq debootstrap >&2 || { apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2; }
fi

rootfs="$WORK/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"
log "debootstrap $SUITE (minbase + python3) into $rootfs"
# python3-venv: the images install everything into /opt/venv (PEP 668: Debian's own python is externally
# managed). ca-certificates: the trust store the CA-bundle secret is appended to.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
# Same trimming as Docker's official Debian images: no package lists or caches in the base layer.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
log "docker import as $TAG"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --message "debootstrap $SUITE minbase + python3 (CI base, made locally)" \
    - "$TAG" >&2
rm -rf "$rootfs"
echo "$TAG"
