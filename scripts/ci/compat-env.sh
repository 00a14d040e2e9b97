#!/usr/bin/env bash
# Create (or reuse) .venv-torch23: Python 3.10 with the CUDA image's locked stack (torch 2.3.1, transformers
# 4.57.6, peft, accelerate, bitsandbytes 0.49.2) plus pytest, for running tests/pipeline against the images'
# library versions. Idempotent: a stamp file holds the hash of the inputs; an unchanged venv is left alone.
#   bash scripts/ci/compat-env.sh && .venv-torch23/bin/python -m pytest tests/pipeline
# First run: ~2.7 GB of wheels from PyPI, a few minutes on 2 cores; later runs: instant.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${CKIT_COMPAT_VENV:-.venv-torch23}"
INPUTS=(requirements/image-cuda-torch.lock requirements/image-cuda.lock requirements/image-demo.lock
        requirements/compat-torch23.txt)

find_python310() {
    local candidate
    for candidate in "${CKIT_PYTHON310:-}" python3.10 /root/.pyenv/versions/3.10.*/bin/python3.10 /usr/bin/python3.10; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    echo "compat-env: no Python 3.10 found (the GPU images run Ubuntu 22.04's 3.10); set CKIT_PYTHON310" >&2
    exit 1
}

want="$(cat "${INPUTS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$want" ]] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "compat-env: $VENV up to date" >&2
    exit 0
fi

python310="$(find_python310)"
rm -rf "$VENV"
"$python310" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# The image's own lock files, hash-checked, exactly as Dockerfile.cuda's torch and app stages install them.
"${pip[@]}" --require-hashes --no-deps -r requirements/image-cuda-torch.lock
"${pip[@]}" --require-hashes -r requirements/image-cuda.lock
"${pip[@]}" --require-hashes --no-deps -r requirements/image-demo.lock
"${pip[@]}" -r requirements/compat-torch23.txt
"$VENV/bin/python" - <<'PY'
import torch, transformers, peft, accelerate, bitsandbytes
print(f"compat-env: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}")
PY
echo "$want" > "$VENV/.stamp"
