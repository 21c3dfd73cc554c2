"""The command line on the tiny model: one-line errors for bad input, and runs that survive
Ctrl-C, ``kill`` and ``kill -9``.

Every case runs the CLI in a separate process. Starting Python and importing torch and
TransformerLens takes several seconds on a small machine, so most cases run in processes
forked from a *CLI server* that has done those imports once (:class:`CliServer`): each
child sets ``sys.argv`` and calls the console script's entry point, with its own
stdout/stderr files, exactly as ``persona-refusal ...`` does after its imports; an
uncaught exception prints its traceback as the interpreter would. The runs that are
interrupted by signals, and one error case, start the CLI from scratch
(``python -m persona_refusal.cli`` / the ``persona-refusal`` script).

``docs/bad-input.md`` lists the messages checked here.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from persona_refusal.directions import Direction, LayerDirections

from bad_input_cases import RUN_CASES
from clitools import RUN, Result, assert_one_line_error, cli, cli_env, run_bad_case  # noqa: F401  (fixtures)


# ============================================================================ bad input
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of bad inputs (and a few good ones)."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "empty.txt").write_text("\n  \n")
    (d / "prompts.xlsx").write_bytes(b"PK\x03\x04 not a prompt file")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    (d / "a_folder").mkdir()
    (d / "a_file").write_text("x")
    (d / "no_column.csv").write_text("id,text_of_prompt\n1,How do I bake bread?\n")
    (d / "long.txt").write_text("\n".join(["How do I bake bread?"] * 5 + ["word " * 2000]) + "\n")
    (d / "not_a_model.gguf").write_bytes(b"NOPE" + b"\x00" * 60)
    (d / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05")  # a valid start, then nothing
    (d / "position.json").write_text(json.dumps({"selection_positions": [-50]}))
    (d / "bad.json").write_text('{"n_train": 4,')
    (d / "list.json").write_text("[1, 2]")
    (d / "unknown_key.json").write_text(json.dumps({"n_trian": 4}))
    (d / "wrong_type.json").write_text(json.dumps({"n_sweep": "many"}))
    (d / "wrong_list.json").write_text(json.dumps({"alphas": 3}))
    (d / "wrong_section.json").write_text(json.dumps({"prompts": {"persona_alpha": 2.0}}))
    (d / "seed_text.json").write_text(json.dumps({"seed": "x"}))
    (d / "kl_text.json").write_text(json.dumps({"kl_threshold": "a"}))
    (d / "layer_text.json").write_text(json.dumps({"persona_layer": "3"}))
    (d / "dtype_float8.json").write_text(json.dumps({"dtype": "float8"}))
    (d / "layers_text.json").write_text(json.dumps({"gating_layers": ["a"]}))
    (d / "no_results").mkdir()
    g = torch.Generator().manual_seed(0)
    other = dict(model_id="other/model", model_checksum="0" * 64)
    Direction(vector=torch.randn(32, generator=g), layer=1, name="narrow", **other).save(d / "narrow")
    Direction(vector=torch.randn(64, generator=g), layer=1, name="foreign", **other).save(d / "foreign")
    Direction(vector=torch.randn(64, generator=g), layer=9, name="deep", **other).save(d / "deep")
    LayerDirections(vectors=torch.randn(4, 64, generator=g), layers=(0, 1, 2, 3), name="foreign_persona",
                    **other).save(d / "foreign_persona")
    return d


BAD_INPUT = RUN_CASES


@pytest.mark.parametrize("case, args, expected, setup", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_error(cli, inputs, tmp_path, case, args, expected, setup):
    run_bad_case(cli, inputs, tmp_path, case, args, expected, setup=setup)


def test_console_script_error_from_scratch(cli_env, tmp_path):
    """The installed ``persona-refusal`` script, started from nothing (no server)."""
    script = Path(sys.executable).with_name("persona-refusal")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "persona_refusal.cli"]
    res = subprocess.run([*exe, *RUN, "--out", tmp_path / "out", "--train-harmful", tmp_path / "missing.txt"],
                         capture_output=True, text=True, env=cli_env, timeout=300)
    line = assert_one_line_error(Result(res.returncode, res.stdout, res.stderr), tmp_path / "out")
    assert line == f"error: prompt file {tmp_path / 'missing.txt'} does not exist (check the path)"


SMALL = ["--n-train", "4", "--n-val", "2", "--n-eval", "4", "--n-sweep", "2", "--alphas", "1", "--persona-questions",
         "1", "--max-new-tokens", "4"]
"""A very small study (a second or two of compute)."""


def test_folder_with_another_configuration_needs_force(cli, tmp_path):
    out = tmp_path / "out"
    first = cli([*RUN, *SMALL, "--out", out], cwd=tmp_path)
    assert first.rc == 0, first.stderr
    results = (out / "results.json").read_bytes()
    res = cli([*RUN, *SMALL, "--seed", "1", "--out", out], cwd=tmp_path)
    line = assert_one_line_error(res)
    assert re.fullmatch(r"error: /.*/out holds a run with a different configuration \(changed: config\) "
                        r"\(use another --out folder, or --force to start over there\)", line), line
    assert (out / "results.json").read_bytes() == results  # untouched
    # The same for a run that did not finish: still refused, and nothing written.
    (out / "results.json").unlink()
    checkpoints = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    assert_one_line_error(cli([*RUN, *SMALL, "--seed", "1", "--out", out], cwd=tmp_path), out)
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == checkpoints
    forced = cli([*RUN, *SMALL, "--seed", "1", "--out", out, "--force"], cwd=tmp_path)
    assert forced.rc == 0, forced.stderr
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 1


def test_a_run_resumes_on_another_device_but_not_in_another_dtype(cli, tmp_path):
    """The whole (small) study in bfloat16 on the CPU. The device says where a run computes,
    not what: it is recorded in run_info, not in the run's configuration, so the run resumes
    with another --device; the dtype changes the numbers, so another --dtype is refused."""
    out = tmp_path / "out"
    first = cli([*RUN, *SMALL, "--dtype", "bfloat16", "--device", "cpu", "--out", out], cwd=tmp_path)
    assert first.rc == 0, first.stderr
    assert "dtype=bfloat16" in first.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["dtype"] == "bfloat16" and "device" not in r["config"]
    assert (r["run_info"]["device"], r["run_info"]["dtype"], r["run_info"]["decode"]) == ("cpu", "bfloat16", "packed")
    memory = r["run_info"]["stage_peak_rss_mb"]  # each stage's peak resident memory (Linux)
    if sys.platform.startswith("linux"):
        assert set(memory) == {"before_stages", *r["run_info"]["stages"]}
        assert all(isinstance(v, float) and v > 50 for v in memory.values()), memory
    no_cuda = "import torch\ntorch.cuda.is_available = lambda: False\n"  # auto is the CPU, on any machine
    again = cli([*RUN, *SMALL, "--dtype", "bfloat16", "--out", out], cwd=tmp_path, setup=no_cuda)
    assert again.rc == 0, again.stderr
    assert "(resuming)" in again.stdout
    assert _results(out) == {k: v for k, v in r.items() if k != "run_info"}
    line = assert_one_line_error(cli([*RUN, *SMALL, "--out", out], cwd=tmp_path))  # float32 now
    assert "holds a run with a different configuration (changed: config)" in line


def test_the_paper_preset_runs_in_float16(cli, tmp_path):
    out = tmp_path / "out"
    res = cli(["run", "--model", "tiny", "--preset", "paper-smoke", "--quiet", "--no-figures", *SMALL,
               "--dtype", "float16", "--out", out], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    r = json.loads((out / "results.json").read_text())
    assert r["run_info"]["dtype"] == "float16" and r["config"]["dtype"] == "float16"
    assert r["gating_judged"]["cell_rows"] and r["calibration"]["calibrated"]


def test_allow_transfer_uses_a_direction_from_another_model(cli, inputs, tmp_path):
    out = tmp_path / "out"
    res = cli([*RUN, *SMALL, "--refusal-direction", inputs / "foreign", "--allow-transfer", "--out", out],
              cwd=tmp_path)
    assert res.rc == 0, res.stderr
    given = Direction.load(inputs / "foreign")
    used = Direction.load(out / "directions" / "refusal")
    assert torch.equal(used.vector, given.vector) and used.model_id == "other/model"
    assert json.loads((out / "results.json").read_text())["refusal_direction"]["layer"] == given.layer


# ============================================================================ interrupted runs
def _results(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    assert "run_info" in r
    r.pop("run_info")
    return r


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory) -> dict:
    """results.json (without run_info) of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    res = cli([*RUN, "--out", out], cwd=out.parent)
    assert res.rc == 0, res.stderr
    return {"results": _results(out), "directions": {p.name: p.read_bytes() for p in (out / "directions").iterdir()}}


def _start(out: Path, env: dict) -> subprocess.Popen:
    """``python -m persona_refusal.cli run ...`` from scratch, as a user starts it. SIGINT is
    set back to its default: a process started in the background by a non-interactive
    shell inherits SIGINT ignored, and Python keeps it ignored."""
    return subprocess.Popen([sys.executable, "-m", "persona_refusal.cli", *RUN, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {path.name} appeared:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _assert_resumes_to_reference(cli, out: Path, reference: dict, *, resuming: bool = True) -> None:
    res = cli([*RUN, "--out", out], cwd=out.parent)
    assert res.rc == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert not resuming or "(resuming)" in res.stdout
    assert _results(out) == reference["results"]
    assert {p.name: p.read_bytes() for p in (out / "directions").iterdir() if not p.name.startswith(".")} \
        == reference["directions"]


@pytest.mark.parametrize("sig, wait_for", [(signal.SIGINT, "gating.json"), (signal.SIGTERM, "eval.json")],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_says_where_and_resumes_to_identical_results(cli, cli_env, reference, tmp_path, sig, wait_for):
    out = tmp_path / "out"
    proc = _start(out, cli_env)
    _wait_for(proc, out / "checkpoints" / wait_for)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    m = re.search(r"interrupted during stage '(\w+)'; (\d+) completed points are saved in (.+)/checkpoints\.\n"
                  r"Run the same command again to resume where it stopped\.", stdout)
    assert m, stdout
    assert m.group(3) == str(out) and int(m.group(2)) > 0
    assert not (out / "results.json").exists()
    _assert_resumes_to_reference(cli, out, reference)


def test_killed_run_resumes_to_identical_results(cli, cli_env, reference, tmp_path):
    """``kill -9`` at a random moment (model loading, a stage, between two checkpoint writes…)."""
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 3.0)
    out = tmp_path / "out"
    proc = _start(out, cli_env)
    _wait_for(proc, out / "config.json")  # the model is loaded, the study has started
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 0), f"seed {seed}"
    try:
        _assert_resumes_to_reference(cli, out, reference, resuming=False)
    except AssertionError as e:
        raise AssertionError(f"after kill -9 {delay:.2f} s into the study (seed {seed}): {e}") from e


def test_ablation_demo_without_a_passing_direction_is_one_line_error(cli, tmp_path):
    """On the random tiny model no candidate beats even the relative fallback: the core demo
    says so in one line and writes nothing (on the demo model the slow tier runs it)."""
    out = tmp_path / "abl"
    res = cli(["ablation-demo", "--model", "tiny", "--n-eval", "4", "--max-new-tokens", "3", "--out", out,
               "--quiet"], cwd=tmp_path)
    line = assert_one_line_error(res, out)
    assert line.startswith("error: no candidate direction passes the filters")


def test_prompt_files_are_checked_before_the_model_is_loaded(cli, tmp_path):
    """A bad prompt file fails at once: it is reported even when the model would fail to load
    (and so never costs a minute of loading the demo model first)."""
    res = cli([*RUN, "--model", "no-such-model", "--out", tmp_path / "out", "--train-harmful",
               tmp_path / "missing.txt"], cwd=tmp_path)
    line = assert_one_line_error(res, tmp_path / "out")
    assert line == f"error: prompt file {tmp_path / 'missing.txt'} does not exist (check the path)"
