"""The set-up scripts. Chromium step (scripts/setup.sh), run with fake commands on PATH.

README command 1 (scripts/demo.sh) and command 2 (scripts/test.sh) both source it: a
browser already there is used, root + apt-get installs Debian's chromium, anything else
gets one note line and the run goes on (HTML figures only)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.sh"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _ensure(bin_dir: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # PATH holds only the fakes and the shell's own tools (so no real chromium is found)
    for tool in ("sh", "bash", "echo", "cat", "touch"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if real and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(real)
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir)} | (env_extra or {})
    return subprocess.run([str(bin_dir / "bash"), "-c", f". {SCRIPT}; ensure_chromium 'NO-PNG-NOTE'; echo rc=$?"],
                          capture_output=True, text=True, env=env, timeout=30)


@pytest.fixture
def bin_dir(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    return d


def test_browser_on_path_is_used_silently(bin_dir):
    _fake(bin_dir, "chromium", "exit 0")
    _fake(bin_dir, "id", "echo 0")
    _fake(bin_dir, "apt-get", f"touch {bin_dir}/apt-was-called")
    out = _ensure(bin_dir)
    assert out.stdout.strip() == "rc=0" and out.stderr == ""
    assert not (bin_dir / "apt-was-called").exists()


def test_browser_path_variable_is_used(bin_dir, tmp_path):
    chrome = tmp_path / "my-chrome"
    chrome.write_text("#!/bin/sh\n")
    chrome.chmod(0o755)
    _fake(bin_dir, "id", "echo 1000")
    out = _ensure(bin_dir, {"BROWSER_PATH": str(chrome)})
    assert out.stdout.strip() == "rc=0" and out.stderr == ""


def test_root_with_apt_installs_chromium(bin_dir):
    _fake(bin_dir, "id", "echo 0")
    _fake(bin_dir, "apt-get", f'echo "$@" >> {bin_dir}/apt-calls')
    out = _ensure(bin_dir)
    assert out.stdout.strip() == "rc=0"
    calls = (bin_dir / "apt-calls").read_text().splitlines()
    assert calls[0].startswith("update") and "install" in calls[1] and calls[1].endswith("chromium")
    assert "NO-PNG-NOTE" not in out.stderr


def test_failed_apt_install_says_what_is_lost(bin_dir):
    _fake(bin_dir, "id", "echo 0")
    _fake(bin_dir, "apt-get", "exit 100")
    out = _ensure(bin_dir)
    assert out.stdout.strip() == "rc=0"  # the run goes on
    assert "could not install chromium" in out.stderr and "NO-PNG-NOTE" in out.stderr


def test_no_root_no_browser_is_one_note_line(bin_dir):
    _fake(bin_dir, "id", "echo 1000")
    _fake(bin_dir, "apt-get", f"touch {bin_dir}/apt-was-called")
    out = _ensure(bin_dir)
    assert out.stdout.strip() == "rc=0"
    assert len(out.stderr.strip().splitlines()) == 1 and "NO-PNG-NOTE" in out.stderr
    assert not (bin_dir / "apt-was-called").exists()


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_both_readme_commands_use_it(script):
    text = (ROOT / "scripts" / script).read_text()
    assert ". scripts/setup.sh" in text and "ensure_chromium" in text and "install_package" in text
    assert os.access(ROOT / "scripts" / script, os.X_OK)
