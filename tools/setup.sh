#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned test/benchmark environment into it.
# Idempotent: a second run only checks that the pinned set is present.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-test.txt
