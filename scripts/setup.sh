# Sourced by scripts/demo.sh and scripts/test.sh (README commands 1 and 2).
#
# install_package EXTRAS: a .venv from nothing (Python 3.11 + pip), torch's CPU build
# first (a bare `torch` requirement would pull a multi-GB CUDA build), then this package
# in editable mode with the given extras, e.g. `install_package demo,dev`.
install_package() {
  local py="${PYTHON:-python3}"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[$1]"
}

# ensure_chromium NOTE: make a headless Chromium available to kaleido (PNG export) where
# this machine allows it, and say plainly (NOTE: what is lost) when it does not.
# Order: a Chromium/Chrome already on PATH or in $BROWSER_PATH; else Debian/Ubuntu's
# `chromium` package when running as root with apt-get; else a one-line note (the run
# then writes HTML figures and report.html, and `persona-refusal figures DIR` adds the
# PNGs later, once a Chrome is installed).
ensure_chromium() {
  local why="$1"  # what is lost without it, for the note
  if [ -n "${BROWSER_PATH:-}" ] && [ -x "${BROWSER_PATH}" ]; then return 0; fi
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && return 0
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for PNG export (apt-get, about a minute)..." >&2
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
      return 0
    fi
    echo "note: could not install chromium with apt-get; $why" >&2
  else
    echo "note: no Chrome/Chromium found and no root+apt-get to install one; $why" >&2
  fi
  return 0
}
