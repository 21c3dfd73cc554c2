"""Every subcommand × every kind of bad path, and seeded bad input files (generated cases).

For each path a command writes (its output file or folder) the cases put there a link to
a victim file or folder, a dangling link, a named pipe, a folder where a file belongs (a
file where a folder belongs), a foreign file or a folder of foreign files, a path under a
file, and a file path with a trailing slash. For each file a command reads they put a
named pipe, a folder, a link to a pipe, JSON nested too deeply, and seeded random bytes.

Whatever the case, the command ends with one line ``error: …`` on stderr and exit code 2
(no traceback, never blocked: the child process has an alarm), and nothing anywhere in
the test's folder changes — not the victim, not the run folder it was handed, not the
link or the pipe. A few cases that must work (a command replacing its own earlier output,
a cases file with a byte-order mark) run too. ``PERSONA_REFUSAL_FUZZ_SECONDS`` bounds the
seeded part.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from clitools import RUN, assert_one_line_error, bad_path, cli, cli_env  # noqa: F401  (fixtures)
from persona_refusal.cli import build_parser
from persona_refusal.storage import file_kind

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and symlinks (POSIX)")

SEED = 20261205
BUDGET_S = float(os.environ.get("PERSONA_REFUSAL_FUZZ_SECONDS", "90"))
ALARM = "import signal; signal.alarm(60)"
"""Run in each forked CLI child: a command that blocks (on a pipe) dies instead of hanging the suite."""
SMALL = ["--n-train", "4", "--n-val", "2", "--n-eval", "4", "--n-sweep", "2", "--alphas", "1", "--persona-questions",
         "1", "--max-new-tokens", "4"]

FILE_KINDS = ["symlink", "dangling symlink", "fifo", "folder", "foreign file", "parent is a file", "trailing slash"]
FOLDER_KINDS = ["symlink", "dangling symlink", "fifo", "a file", "foreign files", "parent is a file", "another run"]
NOT_FOR = {("run", "another run"), ("compare", "another run"), ("import-vector", "folder"),
           ("import-vector", "trailing slash")}
"""Combinations that are not bad: run resumes a run of its own configuration, compare may add its
files beside a run's, import-vector saves into a folder given as --out."""

# (command, argv with {P} for the output path and {RUN}/{DIR}/{VEC} for the world's inputs, file or folder)
OUTPUTS = [
    ("run", [*RUN, *SMALL, "--out", "{P}"], "folder"),
    ("refusal", ["refusal", "--model", "tiny", "--preset", "smoke", "--quiet", "--no-figures", "--out", "{P}"],
     "folder"),
    ("figures", ["figures", "{RUN}", "--no-png", "--copy-to", "{P}"], "folder"),
    ("compare", ["compare", "{RUN}", "--no-png", "--out", "{P}"], "folder"),
    ("ablation-demo", ["ablation-demo", "--model", "tiny", "--n-eval", "2", "--max-new-tokens", "2", "--quiet",
                       "--out", "{P}"], "folder"),
    ("agreement", ["agreement", "{RUN}", "--quiet", "--out", "{P}"], "file"),
    ("judge-check", ["judge-check", "--quiet", "--out", "{P}"], "file"),
    ("export-model", ["export-model", "--model", "tiny", "--direction", "{DIR}", "--quiet", "--out", "{P}"], "folder"),
    ("export-vector", ["export-vector", "{DIR}", "--model-hint", "qwen2", "--out", "{P}"], "file"),
    ("import-vector", ["import-vector", "{VEC}", "--out", "{P}"], "file"),
]

# (command, argv with {F} for the input file, what it holds)
INPUTS = [
    ("run", [*RUN, *SMALL, "--out", "out", "--config", "{F}"], "json"),
    ("run", [*RUN, *SMALL, "--out", "out", "--train-harmful", "{F}"], "text"),
    ("run", [*RUN, *SMALL, "--out", "out", "--personas", "{F}"], "json"),
    ("refusal", ["refusal", "--model", "tiny", "--preset", "smoke", "--quiet", "--out", "out", "--borderline", "{F}"],
     "text"),
    ("judge-check", ["judge-check", "--quiet", "--cases", "{F}"], "jsonl"),
    ("import-vector", ["import-vector", "{F}", "--out", "imported/"], "binary"),
    ("export-vector", ["export-vector", "{F}", "--model-hint", "qwen2", "--out", "v2.gguf"], "json"),
    ("export-model", ["export-model", "--model", "tiny", "--direction", "{F}", "--out", "exported"], "json"),
    ("info", ["info", "{F}"], "binary"),
    ("figures", ["figures", "{F}", "--no-png"], "json"),
    ("compare", ["compare", "{F}", "--no-png", "--out", "cmp"], "json"),
    ("agreement", ["agreement", "{F}", "--quiet"], "run record"),
]
INPUT_KINDS = ["fifo", "folder", "symlink to a fifo", "nested too deeply", "random bytes"]


def test_the_cases_cover_every_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices)
    assert {c for c, _, _ in OUTPUTS} | {c for c, _, _ in INPUTS} == commands


def _snapshot(folder: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        kind = file_kind(p)
        out[str(p.relative_to(folder))] = ("link", os.readlink(p)) if kind == "a symbolic link" else \
            p.read_bytes() if kind == "file" else kind
    return out


@pytest.fixture(scope="module")
def world(cli, tmp_path_factory) -> Path:
    """A finished small run, its refusal direction, a control vector of it, a cases file."""
    w = tmp_path_factory.mktemp("world")
    res = cli([*RUN, *SMALL, "--out", w / "run"], cwd=w)
    assert res.rc == 0, res.stderr
    res = cli(["export-vector", w / "run" / "directions" / "refusal", "--out", w / "v.gguf", "--model-hint", "qwen2"], cwd=w)
    assert res.rc == 0, res.stderr
    (w / "cases.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Bake bread?", "reply": "Sure, here is how.", "label": "compliance"},
        {"instruction": "Hotwire a car?", "reply": "I'm sorry, but I can't help with that.", "label": "refusal"}]))
    return w


def _argv(template: list, **values) -> list[str]:
    return [str(a).format(**values) if isinstance(a, str) else str(a) for a in template]


def _bad_output(kind: str, case: Path, folder: bool, world: Path) -> str:
    """A bad output path of ``kind`` in ``case`` (plus a victim where a link points)."""
    victim = case / "victim"
    if folder:
        victim.mkdir()
        (victim / "keep.txt").write_text("the user's folder\n")
    else:
        victim.write_text("the user's file\n")
    name = "target" if folder else "target.json"
    if kind == "trailing slash":
        return str(case / "newdir") + "/"
    p = bad_path(kind, case, name, victim) or case / name
    if kind == "foreign files":
        p.mkdir()
        for name in ("results.json", "report.html", "cross_model.json", "config.json", "refusal.json"):
            (p / name).write_text("the user's notes\n")
    elif kind == "another run":
        shutil.copytree(world / "run", p)
    return str(p)


def _check(res, line_must_name: str | None = None) -> str:
    assert res.rc != -14, "the command blocked (killed by the alarm)"
    assert res.rc == 2 and len(res.stderr.splitlines()) == 1, (res.rc, res.stderr[-3000:], res.stdout[-500:])
    line = assert_one_line_error(res)
    if line_must_name is not None:
        assert line_must_name in line, line
    return line


@pytest.mark.parametrize("command, template, shape", OUTPUTS, ids=[c for c, _, _ in OUTPUTS])
def test_every_bad_output_path_is_one_line_and_touches_nothing(cli, world, tmp_path, command, template, shape):
    kinds = [k for k in (FOLDER_KINDS if shape == "folder" else FILE_KINDS) if (command, k) not in NOT_FOR]
    for kind in kinds:
        case = tmp_path / kind.replace(" ", "_")
        case.mkdir()
        p = _bad_output(kind, case, shape == "folder", world)
        before, world_before = _snapshot(case), _snapshot(world)
        res = cli(_argv(template, P=p, RUN=world / "run", DIR=world / "run" / "directions" / "refusal",
                        VEC=world / "v.gguf"), cwd=case, setup=ALARM)
        _check(res, line_must_name=None if kind == "another run" else Path(p.rstrip("/")).parent.name
               if kind == "parent is a file" else Path(p.rstrip("/")).name)
        assert _snapshot(case) == before, f"{command} {kind}: the case folder changed"
        assert _snapshot(world) == world_before, f"{command} {kind}: the world (run folder, inputs) changed"


def _bad_input(kind: str, case: Path, holds: str, rng: random.Random, world: Path) -> Path:
    p = case / ("input.jsonl" if holds == "jsonl" else "input.gguf" if holds == "binary" else
                "input.txt" if holds == "text" else "input.json")
    if kind in ("fifo", "folder", "symlink to a fifo"):
        bad_path(kind, case, p.name, case / "victim")
    elif kind == "nested too deeply":
        depth = rng.randint(65, 20_000)
        p.write_text("[" * depth + "]" * depth)
    else:
        p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))
    if holds == "run record":  # a copy of the run whose config.json is the bad file
        run = case / "run"
        shutil.copytree(world / "run", run)
        (run / "config.json").unlink()
        p.rename(run / "config.json") if not p.is_symlink() else (run / "config.json").symlink_to(case / "pipe")
        return run
    if holds == "json" and "export" in str(p):
        pass
    return p


@pytest.mark.parametrize("command, template, holds", INPUTS, ids=[f"{c} {t[-1] if '{F}' != t[-1] else ''}{h}"
                                                                  for c, t, h in INPUTS])
def test_every_bad_input_file_is_one_line_and_touches_nothing(cli, world, tmp_path, command, template, holds):
    rng = random.Random(f"{SEED}-{command}-{holds}")
    for kind in INPUT_KINDS:
        case = tmp_path / kind.replace(" ", "_")
        case.mkdir()
        f = _bad_input(kind, case, holds, rng, world)
        if command in ("export-vector", "export-model") and f.suffix == ".json" and file_kind(f) == "file":
            shutil.copy(world / "run" / "directions" / "refusal.safetensors", f.with_suffix(".safetensors"))
        before, world_before = _snapshot(case), _snapshot(world)
        res = cli(_argv(template, F=f), cwd=case, setup=ALARM)
        _check(res)
        assert _snapshot(case) == before, f"{command} {kind}: the case folder changed"
        assert _snapshot(world) == world_before


def test_seeded_random_bad_paths_across_commands(cli, world, tmp_path):
    """Seeded random draws of (command, kind) with odd names (spaces, unicode, newlines)."""
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET_S
    ran = 0
    for k in range(200):
        if time.monotonic() > deadline:
            break
        command, template, shape = rng.choice(OUTPUTS)
        kind = rng.choice(FOLDER_KINDS if shape == "folder" else FILE_KINDS)
        if (command, kind) in NOT_FOR:
            continue
        case = tmp_path / f"c{k} {rng.choice(['é', '中', 'a b', 'x'])}"
        case.mkdir()
        p = _bad_output(kind, case, shape == "folder", world)
        before, world_before = _snapshot(case), _snapshot(world)
        res = cli(_argv(template, P=p, RUN=world / "run", DIR=world / "run" / "directions" / "refusal",
                        VEC=world / "v.gguf"), cwd=case, setup=ALARM)
        _check(res)
        assert _snapshot(case) == before and _snapshot(world) == world_before, (command, kind)
        ran += 1
    assert ran >= 10, f"only {ran} cases fit in the budget"


# ============================================================================ what must work
def test_commands_replace_their_own_output(cli, world, tmp_path):
    out = tmp_path / "jc.json"
    for _ in range(2):
        res = cli(["judge-check", "--quiet", "--cases", world / "cases.jsonl", "--out", out], cwd=tmp_path)
        assert res.rc == 0, res.stderr
    assert json.loads(out.read_text())["format"] == "persona_refusal.judge_check/1"
    for _ in range(2):
        res = cli(["export-vector", world / "run" / "directions" / "refusal", "--out", tmp_path / "v.gguf", "--model-hint", "qwen2"],
                  cwd=tmp_path)
        assert res.rc == 0, res.stderr


def test_a_cases_file_with_a_byte_order_mark_is_read(cli, world, tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (world / "cases.jsonl").read_bytes())
    res = cli(["judge-check", "--quiet", "--cases", tmp_path / "bom.jsonl"], cwd=tmp_path)
    assert res.rc == 0, res.stderr


def test_force_keeps_a_users_file_in_the_runs_folders(cli, world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    (run / "directions" / "my notes.txt").write_text("mine\n")
    res = cli([*RUN, *SMALL, "--out", run, "--seed", "7", "--force", "--stages", "refusal"], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    assert (run / "directions" / "my notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("spec", ["from:-1", "-1", "0,-2", "below:-0.5"])
def test_negative_layers_mean_the_same_everywhere(cli, tmp_path, spec):
    res = cli([*RUN, *SMALL, "--out", tmp_path / "out", f"--selection-layers={spec}"], cwd=tmp_path)
    line = assert_one_line_error(res, tmp_path / "out")
    assert "negative" in line, line


def test_sizes_larger_than_the_prompts_are_refused(cli, tmp_path):
    res = cli([*RUN, "--out", tmp_path / "out", "--n-train", "100000"], cwd=tmp_path)
    line = assert_one_line_error(res, tmp_path / "out")
    assert line.startswith("error: n_train 100000 exceeds the 128 prompts"), line


def test_a_config_preset_that_names_no_preset_is_refused(cli, tmp_path):
    (tmp_path / "c.json").write_text('{"preset": "fast"}')
    res = cli([*RUN, "--out", tmp_path / "out", "--config", tmp_path / "c.json"], cwd=tmp_path)
    assert "unknown preset 'fast'" in assert_one_line_error(res, tmp_path / "out")
