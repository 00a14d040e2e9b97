#!/usr/bin/env bash
# The control machine's environment for `make provision`: .venv-provision with requirements/provision.txt only
# (pyinfra, PyYAML and pyinfra's dependencies; about 90 MB, where the development .venv carries torch and
# transformers). Idempotent: a stamp holds the hash of the requirements, so an unchanged environment costs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${PROVISION_VENV:-.venv-provision}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS=requirements/provision.txt

want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f "$VENV/.provision-stamp" && "$(cat "$VENV/.provision-stamp")" == "$want" && -x "$VENV/bin/python" ]]; then
    exit 0
fi
echo "provision-env: installing $VENV from $REQUIREMENTS" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
echo "$want" > "$VENV/.provision-stamp"
