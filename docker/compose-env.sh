#!/usr/bin/env bash
# Print compose's .env for this host:  bash docker/compose-env.sh [VENDOR] [TAG] [REGISTRY] > .env
# or update an existing one in place:  bash docker/compose-env.sh --update .env [VENDOR] [TAG] [REGISTRY]
# (`make env` and the run targets): the keys computed here are replaced, every other line the user wrote (their
# own KIT_DATA_DIR, comments, ...) is kept as it was, and the file is replaced atomically.
# The render group's GID differs between hosts (104, 109, 110 seen), so it is read from this host's group
# database rather than written into compose.yaml. The invoking user's UID/GID make the outputs theirs.
# KIT_IMAGE_ID: the ID of the image the services run (`docker image inspect`, with $DOCKER, default docker), which
# compose passes into the container for the run reports (a container cannot see its own image ID); empty when
# the image is not in the engine yet. The make run targets rewrite it before every run; after building or loading
# an image yourself, run `make env` again before a plain `docker compose run`, or the reports name the old image.
# KIT_MEMLOCK (the jobs' locked-memory limit, compose.yaml) is a setting, not a computed key: --update writes its
# default (-1, unlimited) only when the file has no KIT_MEMLOCK line, and keeps the user's value otherwise.
set -euo pipefail
if [[ "${1:-}" == "--update" ]]; then
    target="${2:?--update needs the .env path}"
    shift 2
    computed="$(bash "$0" "$@")"
    if [[ -f "$target" ]] && grep -qE '^KIT_MEMLOCK=' "$target"; then
        computed="$(printf '%s\n' "$computed" | grep -v '^KIT_MEMLOCK=')"
    fi
    keys="$(printf '%s\n' "$computed" | cut -d= -f1 | paste -sd'|')"
    tmp="$(mktemp "$(dirname "$target")/.env.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    {
        if [[ -f "$target" ]]; then grep -Ev "^(${keys})=" "$target" || true; fi
        printf '%s\n' "$computed"
    } > "$tmp"
    chmod 600 "$tmp"
    mv "$tmp" "$target"
    trap - EXIT
    cat "$target"
    exit 0
fi
vendor="${1:-cpu}"
tag="${2:-latest}"
registry="${3:-}"

gid_of() { getent group "$1" | cut -d: -f3; }

echo "KIT_VENDOR=$vendor"
echo "KIT_TAG=$tag"
echo "KIT_REGISTRY=$registry"
echo "KIT_UID=$(id -u)"
# The same name as docker/compose/<vendor>.yaml's `image:`.
image="${registry}clinical-finetune-kit:${tag}-${vendor}"
echo "KIT_IMAGE_ID=$("${DOCKER:-docker}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
echo "KIT_GID=$(id -g)"
video="$(gid_of video || true)"
render="$(gid_of render || true)"
if [[ "$vendor" == rocm ]]; then
    if [[ -z "$video" || -z "$render" ]]; then
        echo "compose-env: this host has no 'video' or 'render' group: is the ROCm driver (amdgpu-dkms) installed?" \
             "(provision/ sets it up; AMD's docs: add the user to both groups)" >&2
        exit 1
    fi
    if [[ ! -e /dev/kfd ]]; then
        echo "compose-env: warning: /dev/kfd does not exist on this host: ROCm containers will not see a GPU" >&2
    fi
fi
[[ -n "$video" ]] && echo "KIT_VIDEO_GID=$video"
[[ -n "$render" ]] && echo "KIT_RENDER_GID=$render"
echo "KIT_MEMLOCK=-1"
exit 0
