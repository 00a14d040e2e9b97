#!/usr/bin/env bash
# Stop the private engine started by docker-engine.sh, by its PID (never by name: other engines may run here),
# then unmount what dockerd can leave behind under its exec root (an nsfs mount after it stops).
set -euo pipefail

ROOT="${CKIT_DOCKER_ROOT:-/var/tmp/ckit-docker}"
PIDFILE="$ROOT/run/dockerd.pid"

if [[ -f "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "docker-stop: dockerd $pid ignored SIGTERM for 30 s, killing it" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$PIDFILE"
fi
# Deepest first, so nested mounts come off before their parents.
{ grep -F " $ROOT/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r mountpoint; do
    umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" || true
done
echo "docker-stop: engine under $ROOT stopped" >&2
