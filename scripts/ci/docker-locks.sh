#!/usr/bin/env bash
# Regenerate the images' Python lock files from their .in sources (requirements/image-*.in), with hashes.
#   bash scripts/ci/docker-locks.sh                                  # all locks, into requirements/ (make locks)
#   bash scripts/ci/docker-locks.sh --output-dir DIR image-build.lock # only these, into DIR
#   bash scripts/ci/docker-locks.sh --check [LOCK...]  # re-resolve into a temporary folder, name what moved (make locks-check)
#   bash scripts/ci/docker-locks.sh --compare DIR      # only the comparison: DIR's locks against requirements/
# Needs PyPI. Uses uv's resolver (pip-compile compatible output) because it resolves for a *target* Python and
# platform (the GPU images run Ubuntu 22.04's Python 3.10; this machine has 3.11) without installing anything.
# Each lock records the sha256 of its .in files; tests/images/test_pins.py fails when a pin moves without its lock.
# Reproducible as far as the registry allows: uv sees only files uploaded before stack.env's LOCK_EXCLUDE_NEWER
# (`--exclude-newer`), so new releases cannot move a lock; but a registry's view of upload dates is not frozen
# (image-cpu.lock re-resolved to another fonttools on 2026-12-06), so the re-resolution is a registry check
# (--check, `make locks-check`), not a test: tests/images/test_lock_reproduce.py checks the locks offline.
# With --output-dir, the constraints an app lock is resolved against are the committed torch locks in requirements/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C  # one collation for sort and join

R=requirements
OUT=$R
ONLY=()
CHECK=0
COMPARE=
while (($#)); do
    case "$1" in
        --output-dir) OUT="${2:?--output-dir needs a folder}"; shift 2;;
        --check) CHECK=1; shift;;
        --compare) COMPARE="${2:?--compare needs a folder}"; shift 2;;
        -h|--help) sed -n '2,14p' "$0"; exit 0;;
        image-*.lock) ONLY+=("$1"); shift;;
        *) echo "docker-locks: unknown argument '$1' (expected --output-dir DIR, --check, --compare DIR or lock names like image-build.lock)" >&2
           exit 2;;
    esac
done
KNOWN=" image-cuda-torch.lock image-rocm-torch.lock image-cpu-torch.lock image-build.lock image-rocm-torch-build.lock image-cuda.lock image-rocm.lock image-cpu.lock "
for name in "${ONLY[@]}"; do
    if [[ "$KNOWN" != *" $name "* ]]; then
        echo "docker-locks: $name is not a generated lock (one of:$KNOWN)" >&2
        exit 2
    fi
done

# pins_of LOCK: "name version" per pin, names normalised, sorted.
pins_of() {
    grep -oE '^[A-Za-z0-9_.-]+==[^ ;\\]+' "$1" | sed 's/==/ /' | awk '{n=tolower($1); gsub(/[-_.]+/, "-", n); print n, $2}' | sort
}
# compare_locks DIR: every generated lock in DIR against requirements/; names each pin that moved. 1 when any did.
compare_locks() {
    local dir="$1" name moved=0 diff
    for name in $KNOWN; do
        [[ -f "$dir/$name" ]] || continue
        if cmp -s "$dir/$name" "$R/$name"; then echo "$name: same" >&2; continue; fi
        moved=1
        diff="$(join -a1 -a2 -e - -o 0,1.2,2.2 <(pins_of "$R/$name") <(pins_of "$dir/$name") | awk -v lock="$name" '
            $2 != $3 { if ($2 == "-") print lock ": " $1 " added " $3; else if ($3 == "-") print lock ": " $1 " " $2 " removed";
                       else print lock ": " $1 " " $2 " -> " $3 }')"
        if [[ -n "$diff" ]]; then echo "$diff" >&2; else echo "$name: same versions, other hashes or annotations" >&2; fi
    done
    if ((moved)); then
        echo "docker-locks: the registry resolves these locks differently at LOCK_EXCLUDE_NEWER=$EXCLUDE_NEWER" \
             "(its view of upload dates moved, or an .in changed). Review, then 'make locks' and commit." >&2
    fi
    return "$moved"
}
# wanted LOCK: true when LOCK is to be written (every lock when none was named).
wanted() {
    ((${#ONLY[@]} == 0)) || [[ " ${ONLY[*]} " == *" $1 "* ]]
}

# The resolution cutoff, recorded once in stack.env: moving it forward is how the locks take newer releases.
EXCLUDE_NEWER="$(sed -n 's/^LOCK_EXCLUDE_NEWER=//p' stack.env)"
if [[ ! "$EXCLUDE_NEWER" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]]; then
    echo "docker-locks: stack.env: LOCK_EXCLUDE_NEWER must be a UTC time like 2026-11-30T03:00:00Z," \
         "got '${EXCLUDE_NEWER}'" >&2
    exit 2
fi

if [[ -n "$COMPARE" ]]; then
    compare_locks "$COMPARE"
    exit
fi
if ((CHECK)); then
    OUT="$(mktemp -d)"
    trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"

UV_VERSION=0.9.5
TOOLS=.venv-tools
if [[ ! -x "$TOOLS/bin/uv" ]] || [[ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"

# in_hash FILE...: one sha256 over the given .in files (and the files they -r include), order-stable.
in_hash() {
    cat "$@" | sha256sum | cut -d' ' -f1
}

# compile LOCK_NAME PYTHON IN_FILES... [-- extra uv args]: writes $OUT/LOCK_NAME (when wanted).
compile() {
    wanted "$1" || return 0
    local out="$OUT/$1" python="$2"; shift 2
    local ins=() extra=()
    while (($#)); do
        if [[ "$1" == "--" ]]; then shift; extra=("$@"); break; fi
        ins+=("$1"); shift
    done
    local tmp; tmp="$(mktemp)"
    "$UV" pip compile --quiet --generate-hashes --index-url https://pypi.org/simple --exclude-newer "$EXCLUDE_NEWER" \
        --python-version "$python" --python-platform x86_64-manylinux_2_28 \
        --no-header --annotation-style line "${extra[@]}" -o "$tmp" "${ins[0]}"
    {
        echo "# Generated by scripts/ci/docker-locks.sh from ${ins[*]} for Python $python, Linux x86_64. Do not edit."
        echo "# exclude-newer: $EXCLUDE_NEWER (stack.env LOCK_EXCLUDE_NEWER)"
        echo "# in-sha256: $(in_hash "${ins[@]}")"
        cat "$tmp"
    } > "$out.tmp"
    mv "$out.tmp" "$out"
    rm -f "$tmp"
    echo "wrote $out" >&2
}

# Names in a lock file, lower-case, one a line: to leave the torch layer's packages out of an app lock.
names_of() {
    grep -oE '^[A-Za-z0-9_.-]+==' "$1" | sed 's/==$//' | tr 'A-Z_.' 'a-z--'
}
# no_emit_args LOCK: fills the array NO_EMIT with --no-emit-package for every package in LOCK.
no_emit_args() {
    local name
    NO_EMIT=()
    while read -r name; do NO_EMIT+=(--no-emit-package "$name"); done < <(names_of "$1")
}

# CUDA: torch and everything it pulls (nvidia-*, triton) hash-locked from PyPI.
compile image-cuda-torch.lock 3.10 $R/image-cuda-torch.in
# ROCm and CPU: torch's pure-Python dependencies only; torch itself comes from elsewhere (see the .in files).
mapfile -t cuda_only < <(grep -oE '^nvidia-[a-z0-9-]+' $R/image-cuda-torch.lock)
rocm_no_emit=(--no-emit-package torch --no-emit-package triton)
for p in "${cuda_only[@]}"; do rocm_no_emit+=(--no-emit-package "$p"); done
compile image-rocm-torch.lock 3.10 $R/image-rocm-torch.in -- "${rocm_no_emit[@]}"
# PyPI's torch 2.13.0 metadata pulls CUDA 13 wheels; the +cpu wheel we install needs none of them.
CPU_CUDA_ONLY=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx)
cpu_no_emit=()
for p in "${CPU_CUDA_ONLY[@]}"; do cpu_no_emit+=(--no-emit-package "$p"); done
compile image-cpu-torch.lock 3.11 $R/image-cpu-torch.in -- "${cpu_no_emit[@]}"
# The wheel on disk, pinned by its own hash (the same file lies at /opt/wheels on the dev and CI machines).
if wanted image-cpu-torch.lock; then
    cpu_torch_wheel="${CKIT_TORCH_CPU_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
    {
        echo "# torch itself, from the wheel folder given to the build (not PyPI: PyPI's 2.13.0 is a CUDA build)."
        echo "torch==2.13.0+cpu \\"
        echo "    --hash=sha256:$(sha256sum "$cpu_torch_wheel" | cut -d' ' -f1)"
    } >> "$OUT/image-cpu-torch.lock"
fi

# Build tools of the GPU extension stages (the same file for both GPU images).
compile image-build.lock 3.10 $R/image-build.in
# What the ROCm torch source build needs besides image-build.lock (installed together with it: resolved against it).
compile image-rocm-torch-build.lock 3.10 $R/image-rocm-torch-build.in -- --constraint $R/image-build.lock

# App locks, resolved against the torch locks in requirements/: the torch layer's packages are already installed
# below the app stage, so leave them out.
no_emit_args $R/image-cuda-torch.lock
compile image-cuda.lock 3.10 $R/image-cuda.in $R/image-gpu-app.in -- \
    --constraint $R/image-cuda-torch.lock "${NO_EMIT[@]}"
# The ROCm app resolves against torch 2.3.1's metadata too (the CUDA torch lock pins it): the version the ROCm image
# compiles by default (stack.env ROCM_TORCH=source); else the resolver would pick today's torch.
compile image-rocm.lock 3.10 $R/image-rocm.in $R/image-gpu-app.in -- \
    --constraint $R/image-cuda-torch.lock "${NO_EMIT[@]}"
cpu_constraints="$(mktemp)"
grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' $R/image-cpu-torch.lock | grep -v '^torch==' > "$cpu_constraints"
echo "torch==2.13.0" >> "$cpu_constraints"
no_emit_args $R/image-cpu-torch.lock
compile image-cpu.lock 3.11 $R/image-cpu.in -- \
    --constraint "$cpu_constraints" "${NO_EMIT[@]}" "${cpu_no_emit[@]}"
rm -f "$cpu_constraints"
if ((CHECK)); then
    compare_locks "$OUT"
fi
