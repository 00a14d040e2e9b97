#!/usr/bin/env bash
# The make run targets' wrapper around `docker compose run` (make finetune|evaluate|check|shell):
#   bash docker/compose/run.sh docker compose run --rm SERVICE [ARGS...]
# runs that command line as given, after the checks below, from the kit's root (where compose.yaml and .env are).
# Before the run:
#   - the folders compose binds (KIT_OUTPUT_DIR, default ./runs; KIT_CACHE_HOST_DIR, default ./.cache/kit; the
#     default ./data) are created by you, so they are yours: compose.yaml does not let dockerd create them, because
#     it would make them root's, and a job running as your UID could then write nothing;
#   - a KIT_DATA_DIR that does not exist is an error naming the setting and the host path (a typo must not turn
#     into an empty folder and a "no such file" about a path inside the container);
#   - evaluate on a fine-tune's outputs under runs/ that do not exist yet says to fine-tune first.
# After a failed run: runc's "error setting rlimit type 8" (the engine may not grant the locked-memory limit) is
# explained with the setting that changes it, KIT_MEMLOCK.
# Settings are read the way compose reads them: the environment first, then .env, then compose.yaml's default.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

die() { echo "$*" >&2; exit 2; }

# setting NAME DEFAULT -> "value<TAB>where": compose's order (a set, non-empty environment variable, then .env's
# last NAME= line, then the default; compose's ${NAME:-default} treats an empty value as unset too).
setting() {
    local name="$1" default="$2" value=""
    if [[ -n "${!name:-}" ]]; then
        printf '%s\t%s\n' "${!name}" "the environment"
        return
    fi
    if [[ -f .env ]]; then
        value="$(grep -E "^${name}=" .env | tail -n 1 | cut -d= -f2- || true)"
        case "$value" in
            \"*\"|\'*\') value="${value:1:${#value}-2}" ;;
            *)  # compose's .env: " # ..." after an unquoted value is a comment; trailing blanks go too
                value="${value%%[[:space:]]#*}"
                value="${value%"${value##*[![:space:]]}"}" ;;
        esac
    fi
    if [[ -n "$value" ]]; then
        printf '%s\t%s\n' "$value" ".env"
    else
        printf '%s\t%s\n' "$default" "default"
    fi
}

# host_path PATH -> the absolute path compose binds (relative paths are relative to compose.yaml's folder).
host_path() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        "~"|"~/"*) printf '%s\n' "$HOME${1#\~}" ;;
        *) printf '%s\n' "$PWD/${1#./}" ;;
    esac
}

# writable_folder NAME DEFAULT: create a missing output/cache folder as the invoking user; refuse one the job
# cannot write, naming the setting, the path and its owner.
writable_folder() {
    local name="$1" value where path
    IFS=$'\t' read -r value where < <(setting "$name" "$2")
    path="$(host_path "$value")"
    if [[ ! -e "$path" ]]; then
        mkdir -p -- "$path" || die "$name=$value ($where): cannot create $path on this host"
    fi
    [[ -d "$path" ]] || die "$name=$value ($where): $path is not a folder"
    if [[ ! -w "$path" ]]; then
        die "$name=$value ($where): $path belongs to $(stat -c %U:%G "$path") and you ($(id -un)) cannot write" \
            "it, so the job (running as your UID) cannot either. An older run as root made it: ask an admin for" \
            "'chown -R $(id -u):$(id -g) $path', or point $name at a folder of yours in .env."
    fi
}

data_folder() {
    local value where path
    IFS=$'\t' read -r value where < <(setting KIT_DATA_DIR ./data)
    path="$(host_path "$value")"
    if [[ "$where" == default ]]; then
        mkdir -p -- "$path"  # the default, empty in a fresh clone: yours rather than an empty root-owned one
    elif [[ ! -d "$path" ]]; then
        die "KIT_DATA_DIR=$value ($where): no such folder on this host ($path). The jobs see it read-only as" \
            "/data; fix the setting (make env keeps your lines in .env) or create the folder."
    fi
}

# evaluate_inputs_exist [EVALUATE ARGS...]: the --adapter and --data paths under runs/ (compose.yaml's default
# command: the demo run's) must exist on the host before a container starts, else say what makes them.
evaluate_inputs_exist() {
    local value where output path
    IFS=$'\t' read -r value where < <(setting KIT_OUTPUT_DIR ./runs)
    output="$(host_path "$value")"
    local -a paths=()
    if [[ $# -eq 0 ]]; then
        paths=(runs/demo/adapter runs/demo/data/test.jsonl)
    fi
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --adapter|--data) [[ $# -ge 2 ]] && paths+=("$2"); shift ;;
            --adapter=*|--data=*) paths+=("${1#*=}") ;;
        esac
        shift
    done
    local first="Run 'make finetune' first (or 'make demo' on this machine's CPU): it writes the adapter and the"
    first+=" held-out questions under runs/demo/ that evaluate's default arguments read."
    [[ ${#paths[@]} -eq 2 && "${paths[0]}" == runs/demo/adapter ]] ||
        first="Fine-tune the run that writes it first (make finetune ARGS=\"--recipe ... train.output_dir=runs/...\")."
    for path in "${paths[@]}"; do
        [[ "$path" == runs/* ]] || continue
        if [[ ! -e "$output/${path#runs/}" ]]; then
            die "evaluate: $path does not exist yet ($output/${path#runs/}): nothing has been fine-tuned there. $first"
        fi
    done
}

# memlock_valid: compose's own error for a bad value names services.X.ulimits.memlock, not the setting.
memlock_valid() {
    local value where
    IFS=$'\t' read -r value where < <(setting KIT_MEMLOCK -1)
    [[ "$value" =~ ^(-1|[0-9]+)$ ]] || die "KIT_MEMLOCK=$value ($where): expected -1 (unlimited) or a number of bytes"
}

# memlock_hint: runc could not set the jobs' locked-memory limit (RLIMIT_MEMLOCK is rlimit type 8).
memlock_hint() {
    local value where hard example
    IFS=$'\t' read -r value where < <(setting KIT_MEMLOCK -1)
    hard="$(ulimit -Hl)"
    if [[ "$hard" == unlimited ]]; then
        example="the engine's own limit in bytes (prlimit --memlock -p <dockerd's PID>)"
    else
        example="KIT_MEMLOCK=$((hard * 1024)) (this shell's hard limit, ulimit -Hl; a rootless engine has the same)"
    fi
    cat >&2 <<HINT

The Docker engine may not grant the jobs' locked-memory limit, KIT_MEMLOCK=$value ($where; -1 is unlimited,
for pinned host memory in GPU transfers): an engine without CAP_SYS_RESOURCE (rootless Docker, some sandboxes)
gives a container at most its own hard limit. Set KIT_MEMLOCK in .env to what it can grant, e.g.
$example,
then run again; every other setting (no network, your UID) stays. docs/images.md, "Running", says more.
HINT
}

# run_compose COMMAND...: run it, copying its stderr aside to recognise runc's rlimit error afterwards.
run_compose() {
    local status
    stderr_copy="$(mktemp "${TMPDIR:-/tmp}/kit-compose-run.XXXXXX")"
    trap 'rm -f "$stderr_copy"' EXIT
    # stdout stays the terminal (fd 3: an interactive shell keeps its TTY); stderr goes through tee, and the
    # pipeline ends only when tee has written everything (a process substitution would race the grep below).
    set +e
    { "$@" 2>&1 1>&3 3>&- | tee "$stderr_copy" >&2; status=${PIPESTATUS[0]}; } 3>&1
    set -e
    if [[ $status -ne 0 ]] && grep -q "error setting rlimit type 8" "$stderr_copy"; then
        memlock_hint
    fi
    return "$status"
}

# service_index COMMAND...: the position of SERVICE in "docker compose run [OPTIONS] SERVICE ARGS...", 1-based.
service_index() {
    local i=1 seen_run=""
    for arg in "$@"; do
        if [[ -n "$seen_run" && "$arg" != -* ]]; then
            echo "$i"
            return
        fi
        [[ "$arg" == run ]] && seen_run=1
        i=$((i + 1))
    done
    die "usage: bash docker/compose/run.sh docker compose run --rm SERVICE [ARGS...]"
}

main() {
    local index
    index="$(service_index "$@")"
    writable_folder KIT_OUTPUT_DIR ./runs
    writable_folder KIT_CACHE_HOST_DIR ./.cache/kit
    data_folder
    memlock_valid
    if [[ "${!index}" == evaluate ]]; then
        evaluate_inputs_exist "${@:index+1}"
    fi
    run_compose "$@"
}

main "$@"
