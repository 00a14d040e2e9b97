#!/usr/bin/env bash
# Install lm-evaluation-harness (requirements/lmeval-parity.txt, exact pins) into .lmeval-site for the lm-eval
# parity test. A --target folder, not .venv: lm-eval pulls ~40 packages (datasets, pandas, scipy, scikit-learn,
# pyarrow ...) that the kit itself never imports; the test puts the folder on PYTHONPATH of an lm-eval subprocess
# only, which then uses .venv's torch and transformers. Idempotent: a stamp holds the hash of the inputs.
#   bash scripts/ci/lmeval-env.sh && KIT_REQUIRE_LMEVAL=1 .venv/bin/python -m pytest tests/pipeline/test_lm_eval_parity.py
set -euo pipefail
cd "$(dirname "$0")/../.."

SITE="${KIT_LMEVAL_SITE:-.lmeval-site}"
PYTHON="${PYTHON:-.venv/bin/python}"
want="$( (cat requirements/lmeval-parity.txt; "$PYTHON" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -d' ' -f1)"
if [[ -f "$SITE/.stamp" && "$(cat "$SITE/.stamp")" == "$want" ]]; then
    echo "lmeval-env: $SITE up to date" >&2
    exit 0
fi
echo "lmeval-env: installing lm-evaluation-harness into $SITE" >&2
rm -rf "$SITE.tmp"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --target "$SITE.tmp" \
    -r requirements/lmeval-parity.txt
PYTHONPATH="$SITE.tmp" "$PYTHON" -c 'import lm_eval.models.huggingface, lm_eval.tasks; import importlib.metadata as m; print("lmeval-env: lm_eval", m.version("lm_eval"))'
# The interpreter the folder's compiled wheels are for: the parity test runs lm-eval with it.
"$PYTHON" -c 'import sys; print(sys.executable)' > "$SITE.tmp/.python"
echo "$want" > "$SITE.tmp/.stamp"
rm -rf "$SITE"
mv "$SITE.tmp" "$SITE"
