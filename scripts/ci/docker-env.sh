# shellcheck shell=bash
# Source me after scripts/ci/docker-engine.sh:   source scripts/ci/docker-env.sh
# Points the docker CLI (and the docker Python SDK) at the private engine: DOCKER_HOST, DOCKER_CONFIG (where the
# buildx and compose plugins are), PATH (its docker CLI first).
_ckit_env="${CKIT_DOCKER_ROOT:-/var/tmp/ckit-docker}/env"
if [[ -f "$_ckit_env" ]]; then
    # shellcheck disable=SC1090
    source "$_ckit_env"
else
    echo "docker-env: $_ckit_env not found: run scripts/ci/docker-engine.sh first" >&2
fi
unset _ckit_env
