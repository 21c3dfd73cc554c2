"""The command line and the run folder: ``--force`` never deletes an input or a folder that
no run wrote, a folder of results without a configuration is refused, one run at a time
(the lock), and damaged checkpoints or directions are recomputed. Each case runs the CLI in
a separate process (see tests/clitools.py).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from persona_refusal.directions import Direction

from clitools import RUN, Result, assert_one_line_error, cli, cli_env  # noqa: F401  (fixtures)

SMALL = ["--n-train", "4", "--n-val", "2", "--n-eval", "4", "--n-sweep", "2", "--alphas", "1", "--persona-questions",
         "1", "--max-new-tokens", "4"]
"""A very small study (a second or two of compute)."""
ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _results(out: Path) -> dict:
    data = json.loads((out / "results.json").read_text())
    data.pop("run_info")
    return data


@pytest.fixture(scope="module")
def small_run(cli, tmp_path_factory) -> Path:
    """A finished small run (copied by the cases that change it)."""
    out = tmp_path_factory.mktemp("small") / "out"
    res = cli([*RUN, *SMALL, "--out", out], cwd=out.parent)
    assert res.rc == 0, res.stderr
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_force_keeps_a_given_direction_from_the_run_folder(cli, small_run, tmp_path):
    out = _copy(small_run, tmp_path / "out")
    given = {p.name: p.read_bytes() for p in (out / "directions").glob("refusal.*")}
    argv = [*RUN, *SMALL, "--out", out, "--refusal-direction", out / "directions" / "refusal", "--persona-alpha", "2"]
    assert_one_line_error(cli(argv, cwd=tmp_path))  # another configuration: needs --force
    forced = cli([*argv, "--force"], cwd=tmp_path)
    assert forced.rc == 0, forced.stderr
    assert {p.name: p.read_bytes() for p in (out / "directions").glob("refusal.*")} == given  # byte for byte
    assert json.loads((out / "directions" / "refusal_selection.json").read_text())["settings"] == {"given": True}
    assert _results(out)["config"]["persona_alpha"] == 2.0
    again = cli(argv, cwd=tmp_path)  # not stuck: the same command, without --force, resumes
    assert again.rc == 0, again.stderr
    assert "(resuming)" in again.stdout
    assert {p.name: p.read_bytes() for p in (out / "directions").glob("refusal.*")} == given


@pytest.mark.parametrize("force", [False, True])
def test_force_never_clears_a_folder_that_held_no_run(cli, tmp_path, force):
    mine = tmp_path / "mine"
    (mine / "directions").mkdir(parents=True)
    Direction(vector=torch.arange(1.0, 65.0), layer=1, name="mine").save(mine / "directions" / "refusal")
    (mine / "results.json").write_text('{"my": "results"}\n')
    before = _tree(mine)
    res = cli([*RUN, *SMALL, "--out", mine, *(["--force"] if force else [])], cwd=tmp_path)
    line = assert_one_line_error(res)
    assert line == (f"error: {mine} holds directions, results.json but no persona_refusal run (use another --out "
                    "folder: --force only removes what a run of persona_refusal wrote)")
    assert _tree(mine) == before  # every file still there, byte for byte, and nothing added


def test_results_without_a_configuration_are_not_overwritten(cli, tmp_path):
    figs = _copy(ROOT / "figures", tmp_path / "figures_copy")  # the committed figures: results.json, no config.json
    before = _tree(figs)
    line = assert_one_line_error(cli([*RUN, *SMALL, "--out", figs], cwd=tmp_path))
    assert re.fullmatch(rf"error: {re.escape(str(figs))} holds (figures, )?(report\.html, )?results\.json but no "
                        r"persona_refusal run \(use another --out folder: --force only removes what a run of "
                        r"persona_refusal wrote\)", line), line
    assert _tree(figs) == before


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(cli, cli_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "persona_refusal.cli", *RUN, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    try:
        t0 = time.monotonic()
        while not (out / "config.json").exists():  # the store is open: the lock is held
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 300
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)  # hold it there, whatever the speed of this machine
        line = assert_one_line_error(cli([*RUN, "--out", out], cwd=tmp_path), out)
        assert line == (f"error: {out} is in use by process {proc.pid} (another persona-refusal run writes there: "
                        "wait for it to finish, or use another --out folder)")
        proc.kill()  # a run that dies leaves its .lock file: the next run takes it over
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # stale: its process is gone
    res = cli([*RUN, "--out", out], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    assert (out / "results.json").is_file() and not (out / ".lock").exists()


@pytest.mark.parametrize("force", [False, True])
def test_damaged_checkpoints_and_directions_are_recomputed(cli, small_run, tmp_path, force):
    out = _copy(small_run, tmp_path / "out")
    (out / "results.json").unlink()
    shutil.rmtree(out / "figures", ignore_errors=True)
    ck = sorted((out / "checkpoints").glob("*.json"))
    ck[0].write_bytes(ck[0].read_bytes()[:7])  # truncated
    ck[1].write_bytes(b"")  # empty
    ck[2].write_text("[]")  # a list, not an object
    rs = out / "directions" / "refusal.safetensors"
    rs.write_bytes(rs.read_bytes()[:-5])
    (out / "directions" / "persona.json").write_text("{")
    res = cli([*RUN, *SMALL, "--out", out, *(["--force"] if force else [])], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    assert "Traceback" not in res.stderr
    for p in [*ck[:3], rs, out / "directions" / "persona.json"]:
        assert str(p) in res.stderr, (p, res.stderr)
    assert _results(out) == _results(small_run)
    assert _tree(out / "directions") == _tree(small_run / "directions")


def test_a_damaged_given_direction_is_a_one_line_error(cli, small_run, tmp_path):
    for p in (small_run / "directions").glob("refusal.*"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "refusal.safetensors").write_bytes((tmp_path / "refusal.safetensors").read_bytes()[:-5])
    out = tmp_path / "out"
    line = assert_one_line_error(cli([*RUN, *SMALL, "--out", out, "--refusal-direction", tmp_path / "refusal"],
                                      cwd=tmp_path), out)
    assert "refusal.safetensors" in line, line
    assert not out.exists()
