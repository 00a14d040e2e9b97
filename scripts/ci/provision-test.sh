#!/usr/bin/env bash
# Provisioning tests: operation tests (@fake), bad-data tests (CLI) and the chroot deploy test (root + debootstrap).
# The chroot test debootstraps a Debian root into .cache/provision/ on first use (PROVISION_TEST_CACHE moves it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec nice "$PYTHON" -m pytest -q tests/provision "$@"
