"""The command line on inputs that used to crash or mislead ("nothing lost", part two):
each is one line on stderr, ``error: <what is wrong> (<how to fix it>)``, exit code 2, no
traceback, and no file written anywhere (neither an output folder nor the working
directory). ``docs/bad-input.md`` lists the messages.

The cases run in subprocesses (:mod:`clitools`); the ones that read a named pipe start the
CLI from scratch under a timeout, so a loader that blocks on the pipe fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bad_input_cases import INPUT_CASES
from clitools import RUN, Result, assert_one_line_error, cli, cli_env, run_bad_case  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
COMMITTED_RESULTS = REPO / "figures" / "results.json"
"""A results.json of the current schema (the committed demo run): figures need no model."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of inputs that used to crash or mislead."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "nul.txt").write_bytes(b"\x00" * 32)
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "numbers.json").write_text('["How do I bake bread?", 5, true]')
    (d / "objects.jsonl").write_text('{"instruction": {"text": "How do I bake bread?"}}\n')
    (d / "deep_config.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "a_file").write_text("x")
    (d / "bad.jinja").write_text("{% if %}")
    (d / "personas_missing.yaml").write_text("instructions:\n  positive: [Serve the user.]\nquestions: [Help me]\n")
    (d / "personas_empty.json").write_text('{"compliant": [], "refuser": ["A gatekeeper."], "questions": ["Help?"]}')
    run = d / "run"
    run.mkdir()
    shutil.copy(COMMITTED_RESULTS, run / "results.json")
    odd = d / "run_with_a_file"
    odd.mkdir()
    shutil.copy(COMMITTED_RESULTS, odd / "results.json")
    (odd / "figures").write_text("not a folder")
    bad = d / "bad_run"
    bad.mkdir()
    r = json.loads(COMMITTED_RESULTS.read_text())
    r["gating"] = [{"layer": "x"}]
    (bad / "results.json").write_text(json.dumps(r))
    (bad / "figures").mkdir()
    (bad / "figures" / "gating.html").write_text("the figure of an earlier build")
    (bad / "report.html").write_text("the report of an earlier build")
    return d


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


BAD_INPUT = INPUT_CASES


@pytest.mark.parametrize("case, args, expected", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_error(cli, inputs, tmp_path, case, args, expected):
    before = _files(inputs)
    work = run_bad_case(cli, inputs, tmp_path, case, args, expected)
    assert _files(work) == before, f"{case}: files were written or changed"
    assert not [p for p in work.rglob(".*")], f"{case}: a temporary file was left"


def test_figures_of_a_results_json_path_write_into_its_folder(cli, inputs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    res = cli(["figures", "run/results.json", "--no-png"], cwd=work)
    assert res.rc == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (work / "run" / "figures" / "gating.html").is_file() and (work / "run" / "report.html").is_file()
    assert not (work / "run" / "results.json" / "figures").exists()
    assert not (work / "figures").exists() and not (work / "report.html").exists()


# ----------------------------------------------------------------------------- named pipes, bounded in time
def _bounded(argv: list, cwd: Path, env: dict, timeout: float = 240.0) -> Result:
    """``persona-refusal ARGV`` from scratch, killed after ``timeout`` s (then the test fails)."""
    cmd = [sys.executable, "-m", "persona_refusal.cli", *[str(a) for a in argv]]
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"persona-refusal {' '.join(map(str, argv))} did not end within {timeout:.0f} s "
                    "(blocked on a named pipe?)")
    return Result(res.returncode, res.stdout, res.stderr)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
@pytest.mark.parametrize("flag, expected", [
    ("--train-harmful", r"error: /.*/pipe\.txt is a named pipe \(FIFO\), not a prompt file \(give the path of a "
                        r"regular \.csv, \.json, \.jsonl or \.txt file\)"),
    ("--config", r"error: config file pipe\.txt is a named pipe \(FIFO\), not a config file \(give the path of a regular config file\)"),
], ids=["prompt file", "config file"])
def test_a_named_pipe_is_refused_without_blocking(cli_env, tmp_path, flag, expected):
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "pipe.txt")
    out = work / "out"
    res = _bounded([*RUN, "--out", out, flag, "pipe.txt"], work, cli_env)
    line = assert_one_line_error(res, out)
    assert re.fullmatch(expected, line), f"\n{line}\n{expected}"
    assert sorted(p.name for p in work.iterdir()) == ["pipe.txt"]
