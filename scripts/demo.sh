#!/usr/bin/env bash
# Set up from nothing (Python 3.11 + pip) and run the persona-gating study on the demo
# model: README command 1. Extra arguments go to `persona-refusal run` (default output
# folder runs/demo), e.g. `scripts/demo.sh --preset smoke --out runs/smoke`.
# Interrupted, the same command resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
install_package demo,figures
ensure_chromium "figures will be HTML only (report.html and figures/*.html); add the PNGs later with \`.venv/bin/persona-refusal figures runs/demo\` (or your --out folder) once Chrome or Chromium is installed"
case " $* " in *" --out "*|*" --out="*) exec .venv/bin/persona-refusal run "$@" ;; esac
exec .venv/bin/persona-refusal run --out runs/demo "$@"
