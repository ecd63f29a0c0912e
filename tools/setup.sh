#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned test/benchmark environment into it.
# Idempotent: a second run only checks that the pinned set is present. As root on Debian it also
# installs Chromium and its driver for the UI test (no browser is ever downloaded by a tool).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  # The pinned set takes about 6.5 GiB; pip's own "No space left on device" comes only after
  # minutes of work and names no figure, so say it first.
  free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$free_kib" -lt $((7 * 1024 * 1024)) ]; then
    echo "setup: $((free_kib / 1024)) MiB free here; the test environment needs about 7 GiB" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-test.txt
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: install Debian's chromium and chromium-driver to run the browser UI test" >&2
  fi
fi
