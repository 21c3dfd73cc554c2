"""The ablation demo as a study: the baseline check, checkpoints, resume after an interruption,
and the run-folder rules (lock, manifest, --force only on what it wrote).

On the random tiny model selection finds no direction that passes Arditi et al.'s filters, so
these tests open the filters (``_pick``: the best-bypass candidate): they test the
run folder around the steps, not selection (tests/test_selection.py). The tiny model never
refuses, so every run here also carries the baseline check's warning.
"""

from __future__ import annotations

import json

import pytest

import persona_refusal as pr
from persona_refusal import demo
from persona_refusal.errors import ConfigError, RunFolderError

from clitools import cli, cli_env  # noqa: F401  (fixtures)

SMALL = dict(n_train=4, n_val=3, n_eval=3, max_new_tokens=3, add_coeffs=(1.0, 4.0), progress=False)


_SELECT = demo.select_refusal_direction


def _pick(cm, grid, harmful_val, harmless_val, **kwargs):
    """Selection with its filters open: the best-bypass candidate (a stand-in for selection)."""
    return _SELECT(cm, grid, harmful_val, harmless_val, **{**kwargs, "kl_threshold": 1e9, "induce_threshold": -1e9})


@pytest.fixture(autouse=True)
def _selection(monkeypatch):
    monkeypatch.setattr(demo, "select_refusal_direction", _pick)


def _without_run_info(r: dict) -> dict:
    r = json.loads(json.dumps(r))
    r.pop("run_info")
    return r


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ref"
    warned = []
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "select_refusal_direction", _pick)
    try:
        res = demo.run_ablation_demo(tiny, out, warn=warned.append, **SMALL)
    finally:
        mp.undo()
    return out, res, warned


def test_a_fresh_run_writes_a_run_folder_with_the_baseline_check(reference):
    out, res, warned = reference
    assert sorted(p.name for p in out.iterdir()) == [".persona_refusal_run.json", "checkpoints", "config.json",
                                                     "directions", "results.json"]
    rb = res["refusal_baseline"]
    assert rb["split"] == "val" and rb["refusal"]["n"] == 3 and rb["threshold"] == 0.2
    assert rb["low_refusal"] is True and rb["warning"].startswith("the unsteered model refuses only 0/3 (0%)")
    assert warned == [rb["warning"]]
    assert json.loads((out / "results.json").read_text())["refusal_baseline"] == rb
    assert (out / "directions" / "refusal.json").is_file()
    assert {p.stem for p in (out / "checkpoints").iterdir()} == {"refusal_baseline", "selection", "calibration",
                                                                 "generations", "checks"}
    assert res["sizes"] == {"train": [4, 4], "val": [3, 3], "test": [3, 3]}


def test_an_interrupted_run_resumes_to_the_same_results(tiny, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = demo.generate_details
    calls = []

    def stop_at_the_third(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        if len(calls) == 3:  # the baseline check and one judged condition are saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "generate_details", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        demo.run_ablation_demo(tiny, out, **SMALL)
    assert not (out / "results.json").exists()
    saved = json.loads((out / "checkpoints" / "generations.json").read_text())
    assert list(saved) == ["harmful_baseline"]
    monkeypatch.setattr(demo, "generate_details", real)
    resumed = demo.run_ablation_demo(tiny, out, **SMALL)
    assert resumed["run_info"]["resumed"] is True
    assert _without_run_info(resumed) == _without_run_info(reference[1])


def test_another_configuration_needs_force_which_removes_only_what_a_run_wrote(tiny, reference, tmp_path):
    out = tmp_path / "out"
    demo.run_ablation_demo(tiny, out, **SMALL)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"holds a run with a different configuration \(changed: config"):
        demo.run_ablation_demo(tiny, out, **{**SMALL, "n_eval": 2})
    res = demo.run_ablation_demo(tiny, out, force=True, **{**SMALL, "n_eval": 2})
    assert res["sizes"]["test"] == [2, 2] and (out / "notes.txt").read_text() == "mine"


def test_a_folder_that_is_not_a_run_is_refused(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match="but no persona_refusal run"):
        demo.run_ablation_demo(tiny, out, force=True, **SMALL)
    assert (out / "results.json").read_text() == "{}"


def test_a_second_run_on_a_locked_folder_is_refused(tiny, tmp_path):
    from persona_refusal.study.store import RunStore

    out = tmp_path / "out"
    demo.run_ablation_demo(tiny, out, **SMALL)
    record = json.loads((out / "config.json").read_text())
    with RunStore(out, record):
        with pytest.raises(RunFolderError, match="in use"):
            demo.run_ablation_demo(tiny, out, **SMALL)


def test_presets_and_sizes_from_the_command_line(cli, tmp_path):
    from clitools import assert_one_line_error

    res = cli(["ablation-demo", "--preset", "nope", "--model", "tiny", "--out", tmp_path / "a"], cwd=tmp_path)
    assert assert_one_line_error(res).startswith("error: unknown preset 'nope' (use one of default, smoke)")
    res = cli(["ablation-demo", "--n-train", "0", "--model", "tiny", "--out", tmp_path / "b"], cwd=tmp_path)
    assert assert_one_line_error(res) == ("error: n_train 0 is out of range (use --n-train 1..128: the bundled train "
                                          "split has 128 prompts per side)")
    res = cli(["ablation-demo", "--n-val", "33", "--model", "tiny", "--out", tmp_path / "c"], cwd=tmp_path)
    assert "use --n-val 1..32" in assert_one_line_error(res)
    assert not any((tmp_path / x).exists() for x in "abc")
    assert demo.DEMO_PRESETS["smoke"] == {"n_train": 32, "n_val": 4, "n_eval": 4, "max_new_tokens": 16,
                                          "n_candidates": 4, "add_coeffs": (1.0, 4.0, 16.0)}


def test_the_smoke_preset_runs_through_on_tiny_and_warns(cli, tmp_path):
    """Without a stand-in selection (a subprocess): the smoke preset runs the baseline check (the
    warning goes to stdout at once, and again at the end), selects among its 4 candidate layers
    and finishes."""
    out = tmp_path / "s"
    res = cli(["ablation-demo", "--preset", "smoke", "--model", "tiny", "--out", out, "--quiet"], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines()
                if line.startswith("warning: the unsteered model refuses only 0/4 (0%) of the harmful val prompts")]
    assert len(warnings) == 2, res.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["sizes"] == {"train": [32, 32], "val": [4, 4], "test": [4, 4]} and r["refusal_baseline"]["low_refusal"]
    assert pr.__name__ == "persona_refusal"


def test_bad_chat_template_flag_is_one_line(cli, tmp_path):
    from clitools import assert_one_line_error

    res = cli(["ablation-demo", "--model", "tiny", "--chat-template", tmp_path / "none.jinja", "--out", tmp_path / "o"],
              cwd=tmp_path)
    assert "chat template" in assert_one_line_error(res) and "does not exist" in res.stderr
    with pytest.raises(ConfigError):
        demo.run_ablation_demo("tiny", None, chat_template=tmp_path / "none.jinja", **SMALL)


def test_a_study_on_a_model_that_barely_refuses_says_so(cli, tmp_path):
    """``run --preset smoke`` on the tiny model (it never refuses): the warning line is printed as
    soon as the baseline check knows and again in the summary, results.json carries it, and the
    report shows it; the refusal report says no goal applies."""
    from analysis.refusal_report import _test_goal
    from analysis.report import _baseline_warning

    out = tmp_path / "run"
    res = cli(["run", "--model", "tiny", "--preset", "smoke", "--quiet", "--no-figures", "--out", out], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("warning: the unsteered model refuses only")]
    assert len(lines) == 2, res.stdout
    rb = json.loads((out / "results.json").read_text())["refusal_baseline"]
    assert rb["low_refusal"] is True and lines[0] == f"warning: {rb['warning']}"
    assert "Warning:" in _baseline_warning({"refusal_baseline": rb}) and _baseline_warning({}) == ""
    ed = {"conditions": [{"set": "harmful", "edit": "ablate", "refusal": {"rate": 0.0, "k": 0, "n": 4, "ci": [0, 0.5]},
                          "degenerate": {"rate": 0.0, "k": 0, "n": 4, "ci": [0, 0.5]}}],
          "kl": {"ablate": {"mean": 0.01}}}
    assert all("goal not applicable" in line and "met" not in line.replace("not applicable", "")
               for line in _test_goal(ed, no_refusal=True))
