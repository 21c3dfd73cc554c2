"""persona_refusal.study.registry: stages by name, dependency order, and a new stage end to end."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import no_typecheck
from persona_refusal.errors import ConfigError
from persona_refusal.study import registry
from persona_refusal.study.registry import StageResult, memory, register, registered, stage_order

BUILT_IN = ["refusal", "persona", "steering", "calibrate", "eval", "sweep_caches", "alpha_sweep", "gating",
            "gating_judged", "sensitivity", "persona_orthogonal", "confirm", "heatmap", "knockout", "patching", "projections", "cosines", "persona_sets"]


def test_built_in_stages_run_in_dependency_order():
    order = [s.name for s in stage_order()]
    assert order[: len(BUILT_IN)] == BUILT_IN
    for i, st in enumerate(stage_order()):
        assert all(r in order[:i] for r in st.requires), st.name
        assert st.doc, f"stage {st.name} has no one-line doc"


def test_a_subset_pulls_in_what_it_requires():
    assert [s.name for s in stage_order(["confirm"])] == ["refusal", "persona", "steering", "calibrate", "sweep_caches",
                                                          "gating", "confirm"]
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        stage_order(["nope"])


def test_result_json_fields_skip_memory_fields(tmp_path):
    @dataclass
    class R(StageResult):
        key_a: dict
        tensor: object = memory()

    r = R({"x": 1}, tensor=object())
    assert r.to_json() == {"key_a": {"x": 1}}
    r.save(tmp_path / "r.json")
    assert R.load(tmp_path / "r.json") == R({"x": 1})
    with pytest.raises(ConfigError, match="hold no key_a"):
        R.from_json({})


@pytest.fixture
def extra_stage():
    """A stage registered for one test, removed afterwards."""

    @dataclass
    class Mine(StageResult):
        late_minus_early: dict

    @register("late_minus_early", requires=("gating",), order=200)
    def run(ctx):
        """Refusal rate at the last gating layer minus at the first."""
        g = ctx.result("gating").gating
        return Mine({"value": g[-1]["refusal_rate"] - g[0]["refusal_rate"], "stage_seen": ctx.stage_name})

    yield "late_minus_early"
    registry._REGISTRY["gating"].pop("late_minus_early")


def test_a_new_stage_is_one_registration(extra_stage, tiny, tmp_path):
    """Registering a stage is all it takes: the study runs it after what it needs and
    writes its keys to results.json; a subset run skips what it does not need."""
    from persona_refusal.study import StudyConfig, run_study

    assert extra_stage in registered()
    cfg = StudyConfig.preset("smoke", model="tiny", n_train=8, n_val=4, n_eval=6, n_sweep=4, n_coherence=2,
                             alphas=[1.0], persona_questions=2, gating_layers=[0, 3])
    with no_typecheck():
        res = run_study(cfg, tmp_path / "run", chat_model=tiny, progress=False,
                        stages=["late_minus_early"])
    assert res["late_minus_early"]["stage_seen"] == "late_minus_early"
    g = res["gating"]
    assert res["late_minus_early"]["value"] == g[-1]["refusal_rate"] - g[0]["refusal_rate"]
    assert "heatmap" not in res and "knockout" not in res  # not required, not run
    assert res["run_info"]["stages"] == ["refusal", "persona", "steering", "calibrate", "sweep_caches", "gating",
                                         "late_minus_early"]
