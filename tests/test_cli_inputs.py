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

from clitools import RUN, Result, assert_one_line_error, cli, cli_env  # noqa: F401  (fixtures)

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


# (case id, argv (a list starting with "--": after `run --model tiny --preset smoke --quiet --no-figures
#  --out OUT`), the expected line on stderr)
BAD_INPUT = [
    ("prompt file of NUL bytes", ["--train-harmful", "nul.txt"],
     r"error: /.*/nul\.txt holds NUL bytes \(the first at byte 0\), so it is not a text file \(prompt files are "
     r"\.csv, \.json, \.jsonl or \.txt\)"),
    ("prompt file nested too deeply", ["--train-harmful", "deep.json"],
     r"error: /.*/deep\.json holds JSON nested too deeply to read \(a prompt file is a list of strings or of flat "
     r"records\)"),
    ("prompt that is a number", ["--train-harmful", "numbers.json"],
     r"error: /.*/numbers\.json item 2 is a number \(5\), not a prompt \(give each prompt as a string, or as a "
     r"record with an 'instruction' or 'prompt' string\)"),
    ("prompt field that is an object", ["--eval-harmful", "objects.jsonl"],
     r"error: /.*/objects\.jsonl line 1: field 'instruction' holds a JSON object, not a prompt \(a prompt is a "
     r"string: quote it, or remove the record\)"),
    ("config file nested too deeply", ["--config", "deep_config.json"],
     r"error: config file deep_config\.json holds JSON nested too deeply to read \(write it as \{\"field\": value, "
     r"\.\.\.\} with StudyConfig fields\)"),
    ("run with an empty --out", ["run", "--model", "tiny", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e.g\. --out runs/demo\)"),
    ("figures of a malformed results.json", ["figures", "bad_run", "--no-png"],
     r"error: figure 'gating' cannot be drawn: key 'gating' entry 0 of bad_run/results\.json is malformed "
     r"\(ValueError: invalid literal for int\(\) with base 10: 'x'\) \(fix or remove that entry; nothing was written "
     r"and the figures folder is as it was\)"),
    ("figures of a file that is not results.json", ["figures", "a_file", "--no-png"],
     r"error: a_file is a file, not a run folder \(give the run folder, or the path of its results\.json\)"),
    ("figures of an empty path", ["figures", ""],
     r"error: the run folder is empty \(''\) \(give the run folder or its results\.json, e\.g\. persona-refusal "
     r"figures runs/demo\)"),
    ("figures with an empty --copy-to", ["figures", "run", "--copy-to", ""],
     r"error: --copy-to is empty \(''\) \(give --copy-to a folder path, e\.g\. --copy-to figures\)"),
    ("figures with --copy-to a file", ["figures", "run", "--no-png", "--copy-to", "a_file"],
     r"error: a_file exists and is not a folder \(give copy_to / --copy-to a folder path\)"),
    ("figures where figures/ is a file", ["figures", "run_with_a_file", "--no-png"],
     r"error: run_with_a_file/figures exists and is not a folder \(move that file away, then build the figures "
     r"again\)"),
    ("ablation-demo with no evaluation prompts", ["ablation-demo", "--n-eval", "0", "--max-new-tokens", "-3"],
     r"error: n_eval 0 is out of range \(use --n-eval 1\.\.100: the bundled test split has 100 prompts per side\)"),
    ("ablation-demo with more evaluation prompts than there are", ["ablation-demo", "--n-eval", "101"],
     r"error: n_eval 101 is out of range \(use --n-eval 1\.\.100: the bundled test split has 100 prompts per side\)"),
    ("ablation-demo with a negative reply length", ["ablation-demo", "--max-new-tokens", "-3"],
     r"error: max_new_tokens -3 is out of range \(use --max-new-tokens 1 or more\)"),
    ("ablation-demo with a reply longer than the context", ["ablation-demo", "--model", "tiny", "--n-eval", "2",
                                                            "--max-new-tokens", "600"],
     r"error: max_new_tokens 600 does not fit the context window of 512 tokens \(use --max-new-tokens below 512\)"),
    ("ablation-demo with an empty --out", ["ablation-demo", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e\.g\. --out runs/ablation-demo\)"),
    ("ablation-demo with --out a file", ["ablation-demo", "--out", "a_file"],
     r"error: a_file exists and is not a folder \(give --out a folder path\)"),
    ("ablation-demo with --out under a file", ["ablation-demo", "--out", "a_file/demo"],
     r"error: cannot create the output folder a_file/demo: a_file is not a folder \(give --out a folder path\)"),
    ("ablation-demo with an empty --model", ["ablation-demo", "--model", ""],
     r"error: --model is empty \(''\) \(give a model name or path, e\.g\. --model demo\)"),
]


@pytest.mark.parametrize("case, args, expected", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_error(cli, inputs, tmp_path, case, args, expected):
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    out = work / "out"
    argv = [*RUN, "--out", out, *args] if args[0].startswith("--") else args
    before = _files(work)
    res = cli(argv, cwd=work)
    line = assert_one_line_error(res, out)
    assert re.fullmatch(expected, line), f"\n{line}\n{expected}"
    assert not out.exists(), f"{case}: the output folder was created before the error"
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
    ("--config", r"error: config file pipe\.txt is not a regular file \(give the path of a JSON file\)"),
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
