#!/usr/bin/env bash
# Install (once) and start (if not running) a private Docker engine for the image tests, then print the
# environment to use it:   eval "$(bash scripts/ci/docker-engine.sh)"
#
# Why not the distribution's engine: Debian 12 ships docker.io 20.10, whose builder does not understand the
# Dockerfile heredocs and BuildKit features our Dockerfiles use, and has neither compose v2 nor buildx. Debian 13
# (trixie) has docker.io 26.1, docker-compose 2.26 and docker-buildx 0.13, whose binaries run on Debian 12. We
# fetch exactly those .debs with apt (a private apt state folder, so the host's apt sources are untouched),
# unpack them with dpkg -x under $CKIT_DOCKER_ROOT and start dockerd from there.
#
# Why these dockerd flags: this machine must never create a bridge or NAT rules (traffic to private address
# ranges is forbidden), so the engine runs with no bridge and no iptables; every build and container uses the
# host network (compose.ci.yaml). Own data root, exec root, socket and pidfile keep it apart from any other engine.
# Idempotent: a second run reuses the unpacked files and the running daemon. Stop with scripts/ci/docker-stop.sh.
set -euo pipefail

ROOT="${CKIT_DOCKER_ROOT:-/var/tmp/ckit-docker}"
SUITE="${CKIT_DOCKER_SUITE:-trixie}"
# Packages unpacked from $SUITE. containerd must come with the engine (dockerd starts its own); tini provides
# docker-init (for `init: true`). runc comes from the host's own suite: trixie's runc needs glibc 2.38, which
# Debian 12 lacks (the Go binaries above are fine).
PACKAGES=(docker.io docker-cli docker-buildx docker-compose containerd tini)
HOST_SUITE="${CKIT_DOCKER_HOST_SUITE:-bookworm}"
PREFIX="$ROOT/prefix"
SOCK="$ROOT/run/docker.sock"
PIDFILE="$ROOT/run/dockerd.pid"
LOG="$ROOT/dockerd.log"

log() { echo "docker-engine: $*" >&2; }

install_engine() {
    if [[ -x "$PREFIX/usr/sbin/dockerd" && -x "$ROOT/config/cli-plugins/docker-buildx" && -f "$ROOT/installed" ]]; then
        return
    fi
    log "fetching ${PACKAGES[*]} from Debian $SUITE into $ROOT"
    local apt="$ROOT/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$PREFIX"
    cat > "$apt/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $HOST_SUITE main
SOURCES
    # Private state: this apt run neither reads nor changes the host's sources, lists or package cache.
    local opts=(-o "Dir::State=$apt" -o "Dir::State::status=/dev/null" -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache" -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -qq)
    apt-get "${opts[@]}" update >&2
    (cd "$apt/debs" && apt-get "${opts[@]}" download "${PACKAGES[@]/%//$SUITE}" "runc/$HOST_SUITE" >&2)
    for deb in "$apt/debs"/*.deb; do
        dpkg -x "$deb" "$PREFIX"
    done
    mkdir -p "$ROOT/bin" "$ROOT/config/cli-plugins"
    # The CLI finds plugins in $DOCKER_CONFIG/cli-plugins; Debian puts them under /usr/libexec/docker.
    for plugin in docker-buildx docker-compose; do
        ln -sf "$PREFIX/usr/libexec/docker/cli-plugins/$plugin" "$ROOT/config/cli-plugins/$plugin"
    done
    ln -sf "$PREFIX/usr/bin/docker" "$ROOT/bin/docker"
    ln -sf "$PREFIX/usr/sbin/dockerd" "$ROOT/bin/dockerd"
    for tool in containerd containerd-shim-runc-v2 ctr runc; do
        [[ -e "$PREFIX/usr/bin/$tool" ]] && ln -sf "$PREFIX/usr/bin/$tool" "$ROOT/bin/$tool"
        [[ -e "$PREFIX/usr/sbin/$tool" ]] && ln -sf "$PREFIX/usr/sbin/$tool" "$ROOT/bin/$tool"
    done
    [[ -e "$PREFIX/usr/bin/tini-static" ]] && ln -sf "$PREFIX/usr/bin/tini-static" "$ROOT/bin/docker-init"
    dpkg-deb -f "$apt/debs"/docker.io_*.deb Version > "$ROOT/installed"
}

running() {
    [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [[ -S "$SOCK" ]]
}

start_engine() {
    if running; then
        log "dockerd already running (pid $(cat "$PIDFILE"))"
        return
    fi
    mkdir -p "$ROOT/run" "$ROOT/data" "$ROOT/exec"
    # A daemon that died without cleaning up (killed with its session) leaves its socket, pidfile and mounts
    # under the exec root; a new daemon refuses to start on some of them.
    rm -f "$SOCK" "$PIDFILE"
    { grep -F " $ROOT/exec" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r mountpoint; do
        umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" || true
    done
    log "starting dockerd (log: $LOG)"
    # setsid: the daemon must outlive the shell that started it (CI steps run in separate shells).
    PATH="$ROOT/bin:$PATH" setsid dockerd \
        --host "unix://$SOCK" --pidfile "$PIDFILE" \
        --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
        --storage-driver overlay2 \
        >"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        if running && DOCKER_HOST="unix://$SOCK" "$ROOT/bin/docker" version >/dev/null 2>&1; then
            log "dockerd $(cat "$ROOT/installed") up (pid $(cat "$PIDFILE"))"
            return
        fi
        sleep 1
    done
    log "dockerd did not come up in 60 s; last log lines:"
    tail -20 "$LOG" >&2
    exit 1
}

install_engine
start_engine
cat > "$ROOT/env" <<ENV
export DOCKER_HOST=unix://$SOCK
export DOCKER_CONFIG=$ROOT/config
export PATH=$ROOT/bin:\$PATH
export DOCKER_BUILDKIT=1
ENV
cat "$ROOT/env"
