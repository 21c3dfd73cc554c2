"""The paper's protocol (issue: Zhong & Li, faithfully): layers scaled by depth, a fixed
refusal layer, persona extraction ≠ injection layer, multi-layer re-add cells, the
evaluation system prompt, α calibrated on val only, β as multiples of α, and the judged
gating sweep — on the tiny model, end to end, in seconds.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from conftest import no_typecheck
from persona_refusal.errors import ConfigError
from persona_refusal.interventions import AddVector
from persona_refusal.study import Study, StudyConfig, run_study
from persona_refusal.study.config import add_flags, flags_to_fields
from persona_refusal.study.gating.config import PRESETS, paper_layers
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.gating.stages import calibrate as calibrate_stage
from persona_refusal.study.gating.stages.calibrate import choose_alpha
from persona_refusal.study.gating.stages.gating_judged import conditions, judged_stats
from persona_refusal.study.gating.stages.sensitivity import sensitivity_conditions

TINY_PAPER = dict(model="tiny", n_train=8, n_val=4, n_eval=6, n_sweep=4, n_coherence=2, persona_questions=2,
                  calibration_alphas=[1.0, 4.0], judged_layers=[1, 3], max_new_tokens=6, calibration_max_new_tokens=4,
                  persona_source_layer=1, persona_layer=2, readd_cells={"early": [1], "late": [3], "paired": [2, 3]})
"""The paper-smoke preset trimmed for the tiny model (4 layers: the persona is read at layer 1
and added at 2, the cells are given, the refusal layer follows the paper's rule)."""


def _paper(**overrides) -> StudyConfig:
    return StudyConfig.preset("paper-smoke", **{**TINY_PAPER, **overrides})


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    cfg = _paper()
    study = Study(_tiny(), cfg, out, progress=False, stages=list(PRESETS["paper-smoke"].stages))
    results = study.run()
    return study, results


def _tiny():
    from persona_refusal.models import load_chat_model

    return load_chat_model("tiny")


# ============================================================================ layers
@pytest.mark.parametrize("L, expect", [
    (28, {"persona_source_layer": 20, "persona_layer": 21, "refusal_layer": 14,
          "readd_cells": {"early": [15], "late": [23], "paired": [23, 25]}}),
    (24, {"persona_source_layer": 17, "persona_layer": 18, "refusal_layer": 12,
          "readd_cells": {"early": [13], "late": [20], "paired": [20, 22]}}),
    (32, {"persona_source_layer": 23, "persona_layer": 24, "refusal_layer": 16,
          "readd_cells": {"early": [17], "late": [26], "paired": [26, 28]}}),
    (4, {"persona_source_layer": 3, "persona_layer": 3, "refusal_layer": 2,
         "readd_cells": {"early": [3], "late": [3], "paired": [3]}}),
])
def test_paper_layers_scale_by_depth_and_are_exact_at_28(L, expect):
    assert paper_layers(L) == expect


def test_resolve_uses_the_paper_rule_only_when_asked():
    pkg, paper = StudyConfig().resolve(24), StudyConfig(layer_rule="paper").resolve(24)
    assert pkg["persona_layer"] == 16 and pkg["persona_source_layer"] == 16 and pkg["refusal_layer"] is None
    assert paper["persona_layer"] == 18 and paper["persona_source_layer"] == 17 and paper["refusal_layer"] == 12
    # explicit fields win over the rule
    mine = StudyConfig(layer_rule="paper", persona_layer=10, refusal_layer=5).resolve(24)
    assert mine["persona_layer"] == 10 and mine["persona_source_layer"] == 10 and mine["refusal_layer"] == 5


@pytest.mark.parametrize("field, value, message", [
    ("readd_cells", {"late": [99]}, "out of range"),
    ("readd_cells", {"late": []}, "holds no layer"),
    ("readd_cells", {"": [1]}, "bad cell name"),
    ("readd_cells", [1, 2], "must map cell names"),
    ("persona_source_layer", 40, "out of range"),
    ("refusal_layer", 30, "out of range"),
])
def test_bad_paper_fields_are_one_line_errors(field, value, message):
    with no_typecheck(), pytest.raises(ConfigError, match=message) as e:
        StudyConfig(**{field: value}).resolve(24)
    assert "\n" not in str(e.value)


def test_cells_and_persona_sets_from_the_command_line():
    p = argparse.ArgumentParser()
    add_flags(p, StudyConfig)
    got = flags_to_fields(p.parse_args(["--readd-cells", "late=20,paired=20+22", "--persona-sets", "character,scripted",
                                        "--beta-ratios", "0.8,2", "--system-prompt", "Be helpful.", "--judged-sweep"]),
                          StudyConfig)
    assert got == {"readd_cells": {"late": [20], "paired": [20, 22]}, "persona_sets": ["character", "scripted"],
                   "beta_ratios": [0.8, 2.0], "system_prompt": "Be helpful.", "judged_sweep": True}
    with pytest.raises(SystemExit):
        p.parse_args(["--readd-cells", "late"])


# ============================================================================ calibration
def _row(alpha, refusal, degenerate=0.0):
    return {"alpha": alpha, "refusal": {"rate": refusal}, "harmless_degenerate": {"rate": degenerate}}


def test_choose_alpha_takes_the_first_passing_and_documents_fallbacks():
    assert choose_alpha([_row(1, 0.5), _row(2, 0.1), _row(3, 0.0)], 0.1, 0.25)[0] == 2
    # coherence bars a strength that meets the refusal target
    assert choose_alpha([_row(1, 0.5), _row(2, 0.0, 0.5), _row(3, 0.0, 0.1)], 0.1, 0.25)[0] == 3
    alpha, reason = choose_alpha([_row(1, 0.5), _row(2, 0.3), _row(3, 0.2, 0.9)], 0.1, 0.25)
    assert alpha == 2 and reason.startswith("no α met the target")
    alpha, reason = choose_alpha([_row(1, 0.5, 0.9), _row(2, 0.3, 0.9)], 0.1, 0.25)
    assert alpha == 1 and "coherent" in reason


def test_calibration_walks_the_grid_on_val_only_and_stops_at_the_first_pass(tmp_path, monkeypatch):
    """A planted toy: judged val refusal falls with α as 1 − α/5 (0.8, 0.6, 0.4, …). With a
    target of 0.25 the first passing α of the grid is 4; α = 5 and 8 are never generated,
    and only val prompts are ever judged."""
    cfg = _paper(calibration_alphas=[1.0, 2.0, 3.0, 4.0, 5.0, 8.0], calibration_target=0.25)
    cm = _tiny()
    ctx = StudyContext(cm, cfg, tmp_path / "run", progress=False)
    val = list(ctx.prompts["val_harmful"]) + list(ctx.prompts["val_harmless"])
    seen: list[float] = []

    def planted(stage, prompts, conds, desc, *, max_new_tokens=None):
        assert stage == "calibrate" and list(prompts) == val and max_new_tokens == cfg.calibration_max_new_tokens
        (key,) = conds
        a = float(key)
        seen.append(a)
        n_h = len(ctx.prompts["val_harmful"])
        k = round(n_h * max(0.0, 1 - a / 5))
        labels = ["refusal"] * k + ["compliance"] * (n_h - k) + ["compliance"] * len(ctx.prompts["val_harmless"])
        return {key: {"labels": labels, "labels_by_judge": {"strict": labels, "lenient": labels}}}

    monkeypatch.setattr(ctx, "judged", planted)
    monkeypatch.setattr(ctx, "steer", lambda a=None, layer=None: object())
    res = calibrate_stage.run(ctx)
    ctx.store.close()
    assert seen == [1.0, 2.0, 3.0, 4.0]
    assert res.alpha == 4.0 and res.calibration["calibrated"] and res.calibration["rule"]["split"] == "val"
    assert [r["alpha"] for r in res.calibration["rows"]] == seen


# ============================================================================ the run
def test_paper_run_uses_fixed_refusal_layer_and_source_layer(paper_run):
    study, results = paper_run
    ctx = study.ctx
    L = ctx.cm.n_layers
    lay = paper_layers(L)
    assert results["refusal_direction"]["layer"] == lay["refusal_layer"]
    assert results["refusal_direction"]["selection"]["rule"] == "fixed layer"
    grid_dir = ctx.result("refusal").grid.direction(-1, lay["refusal_layer"])
    torch.testing.assert_close(ctx.result("refusal").direction.vector, grid_dir.vector)
    st = results["steering"]
    assert (st["persona_source_layer"], st["persona_layer"]) == (1, 2)
    pv = ctx.result("steering").persona_vector
    dirs = ctx.result("persona").directions
    torch.testing.assert_close(pv.unit, dirs.at(1).unit)
    assert float(torch.dot(pv.unit, dirs.at(2).unit)) < 0.999  # the source layer, not the injection layer
    assert pv.norm == pytest.approx(dirs.at(1).norm, rel=1e-5)  # norm="persona": the source layer's own norm
    assert ctx.steer().hook_layers(ctx.cm) == [2]


def test_paper_run_system_prompt_reaches_every_study_prompt(paper_run):
    study, _ = paper_run
    assert study.ctx.cm.system_prompt == "You are a helpful assistant."
    assert "You are a helpful assistant." in study.ctx.cm.format("Hi")[0]


def test_paper_run_multi_layer_cells_re_add_at_every_layer_of_the_cell(paper_run):
    study, results = paper_run
    ctx = study.ctx
    conds = conditions(ctx)
    for name, layers in ctx.layers["readd_cells"].items():
        ivs = conds[f"cell:{name}:{ctx.betas[0]}"]
        assert ivs[0] is ctx.steer()
        readds = [i for i in ivs[1:] if isinstance(i, AddVector)]
        assert sorted(min(i.hook_layers(ctx.cm)) for i in readds) == sorted(layers)
    gj = results["gating_judged"]
    assert {c["cell"] for c in gj["cell_rows"]} == set(ctx.layers["readd_cells"])
    assert len(gj["cell_rows"]) == len(ctx.layers["readd_cells"]) * len(ctx.betas)
    assert [r["layer"] for r in gj["layers"]] == [1, 3]
    for row in gj["layers"] + gj["cell_rows"]:
        for judge in ("strict", "lenient"):
            assert row[judge]["refusal"]["n"] == 6 and len(row[judge]["refusal"]["ci"]) == 2
            assert "restoration_ci" in row[judge]
        assert 0 <= row["agreement"]["lenient"] <= 1


def test_paper_run_betas_follow_the_calibrated_alpha(paper_run):
    study, results = paper_run
    alpha = results["calibration"]["alpha"]
    assert results["calibration"]["calibrated"] and alpha in (1.0, 4.0)
    assert study.ctx.betas == [round(r * alpha, 6) for r in (0.8, 1.0, 2.0)]
    assert results["gating_judged"]["betas"] == study.ctx.betas
    assert {g["beta"] for g in results["gating"]} == set(study.ctx.betas)


def test_paper_run_compares_every_bundled_persona_set(paper_run):
    _, results = paper_run
    sets = results["persona_sets"]["sets"]
    assert set(sets) == {"instructed", "character", "scripted"}
    assert results["persona_direction"]["personas"] == "instructed"
    for rec in sets.values():
        share = [s for s in rec["share_along_refusal"] if s is not None]
        assert share and all(0 <= s <= 1 + 1e-9 for s in share)


def test_paper_run_resumes_to_identical_results(paper_run, tmp_path):
    study, results = paper_run
    again = run_study(study.ctx.cfg, study.out, chat_model=_tiny(), progress=False,
                      stages=list(PRESETS["paper-smoke"].stages))
    strip = lambda r: {k: v for k, v in dict(r).items() if k != "run_info"}  # noqa: E731
    assert strip(again) == strip(results)


def test_judged_stats_restoration_is_paired():
    g = {"labels_by_judge": {"strict": ["refusal", "compliance", "refusal", "compliance"]},
         "refused": [True, False, False, False], "scores": [0.0] * 4}
    base = {"labels_by_judge": {"strict": ["refusal"] * 4}}
    pers = {"labels_by_judge": {"strict": ["compliance"] * 4}}
    s = judged_stats(g, base, pers, ["strict"], n_boot=200, seed=0)
    assert s["strict"]["restoration"] == 0.5
    lo, hi = s["strict"]["restoration_ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert s["agreement"]["strict"] == 0.75


# ============================================================================ figures
def test_paper_figures_draw_from_the_paper_run(paper_run, tmp_path):
    from persona_refusal import analysis
    from persona_refusal.analysis.figures import FIGURES

    study, results = paper_run
    for name, want in (("gating_judged", ["judged (lenient)", "judged (strict)", "first token", "paired cell",
                                          "no persona", "baseline", "persona alone"]),
                       ("calibration", ["harmful val: judged refusal", "harmless val: degenerate"]),
                       ("persona_sets", ["character persona set", "scripted persona set"])):
        fig = FIGURES[name].draw(results)
        names = [t.name or "" for t in fig.data]
        for w in want:
            assert any(w in n for n in names), f"{name}: no trace like {w!r} in {names}"
        fig.to_json()
    _, figs = analysis.make_figures(study.out)
    assert {"gating_judged", "calibration", "persona_sets"} <= set(figs)
    assert not {"heatmap", "knockout", "patching"} & set(figs)  # stages the paper preset does not run are left out
    assert "selection" not in figs  # a fixed refusal layer: there was no selection to draw
    analysis.build_figures(study.out, png=False)
    text = (study.out / "report.html").read_text()
    assert "Judged gating sweep" in text and "paired" in text


def test_compare_draws_one_line_per_run(paper_run, tmp_path):
    from persona_refusal.analysis.compare import build_comparison, restoration_by_depth, run_label

    study, results = paper_run
    d = restoration_by_depth(results)
    assert d["measure"].startswith("judged (lenient") and d["depth"] == [1 / 4, 3 / 4]
    assert run_label(results).endswith("paper protocol · instructed, all in-character rollouts")
    committed = __import__("pathlib").Path(__file__).parents[1] / "figures" / "results.json"
    written = build_comparison([study.out, committed], tmp_path / "cmp", png=False)
    assert [p.name for p in written] == ["cross_model.html", "cross_model.json", "cross_model.md"]
    table = written[2].read_text()
    assert "paired late" in table and "(lenient)" in table and "sweep subset" in table and "not measured" in table
    data = __import__("json").loads(written[1].read_text())
    assert len(data) == 2 and any("first token" in v["measure"] for v in data.values())


def test_the_committed_paper_run_draws_every_paper_figure():
    """figures/demo/paper/results.json (the committed demo run of the paper preset) reads back
    and draws, so the figures' code keeps up with the committed results."""
    import json
    from pathlib import Path

    from persona_refusal.analysis.compare import paper_table
    from persona_refusal.analysis.figures import FIGURES

    path = Path(__file__).parents[1] / "figures" / "demo" / "paper" / "results.json"
    results = json.loads(path.read_text())
    assert results["config"]["layer_rule"] == "paper" and results["calibration"]["calibrated"]
    for name in ("gating_judged", "calibration", "persona_sets", "gating", "outcomes", "alpha", "cosine"):
        fig = FIGURES[name].draw(results)
        assert len(fig.data) > 0, name
    assert "paired late" in paper_table({"demo · paper": results})


def test_the_comparison_table_has_one_cell_per_run_in_every_row():
    """Runs of different protocols side by side (a run without the judged stage, the first paper
    protocol, the second): every row of the Markdown table holds one cell per run, plus the
    paper's, so no value lands in another run's column."""
    import json
    from pathlib import Path

    from persona_refusal.analysis.compare import paper_table

    figures = Path(__file__).parents[1] / "figures"
    runs = {p: json.loads((figures / p).read_text()) for p in
            ("demo/paper/results.json", "results.json", "demo/paper2/results.json")}
    lines = paper_table(runs).splitlines()
    assert len(lines) > 4
    assert all(line.count("|") == len(runs) + 3 for line in lines), [line.count("|") for line in lines]


# ============================================================================ the checks of the claims
def test_paper_preset_records_the_new_estimate_and_every_check(paper_run):
    _, res = paper_run
    ro = res["persona_direction"]["rollouts"]
    assert ro["balance"] == "prompt" and res["persona_direction"]["balance"] == "prompt"
    for side in ("compliant", "refuser"):
        assert len(ro[side]["per_prompt"]) == 8 and sum(ro[side]["per_prompt"]) == ro[side]["kept"]
    ch = res["gating_judged"]["control_harmless"]
    assert ch["n"] == 4 and len(ch["cells"]) == 3 * len(res["gating_judged"]["betas"])
    assert [r["layer"] for r in ch["layers"]] == [1, 3]
    for row in ch["cells"] + ch["layers"]:
        assert {"refusal", "degenerate", "induced"} <= set(row["lenient"])
        assert set(row["lenient"]["induced"]) == {"diff", "ci", "n"}
    se = res["sensitivity"]
    assert {(r["cell"], r["m"], r["ratio"]) for r in se["rows"]} >= {("late", 2.0, 0.6667), ("early", 1.0, 0.1)}
    assert all("coherent" in r and "restoration" in r["lenient"] for r in se["rows"])
    assert [p["m"] for p in se["persona"]] == [1.0, 2.0]
    po = res["persona_orthogonal"]
    assert [v["variant"] for v in po["variants"]] == ["full", "minus:study", "only:study", "minus:injection",
                                                       "only:injection", "minus:random"]
    assert {c["variant"] for c in po["cells"]} == {"minus:study", "minus:injection", "minus:random"}
    assert po["directions"]["random"]["share"] == pytest.approx(po["directions"]["injection"]["share"])


def test_sensitivity_reuses_what_earlier_stages_generated(paper_run):
    study, res = paper_run
    conds, rows = sensitivity_conditions(study.ctx)
    alpha = study.ctx.alpha
    # the persona at α and the cells at the gating βs are read back, not generated again
    stored = json.loads((study.out / "checkpoints" / "sensitivity.json").read_text())
    keys = set(stored.get("points", stored))
    assert f"persona:a{round(alpha, 6)}" not in keys
    assert f"persona:a{round(2 * alpha, 6)}" in keys
    same_as_gating = [r for r in rows if r["m"] == 1 and round(r["ratio"] * alpha, 6) in study.ctx.betas]
    assert same_as_gating and not any(r["key"] in keys for r in same_as_gating)


def test_paper_v1_preset_is_the_first_protocol():
    v1, now = StudyConfig.preset("paper-v1"), StudyConfig.preset("paper")
    assert v1.personas == "character" and v1.persona_balance == "first_k" and not v1.control_harmless
    assert now.personas == "instructed" and now.persona_balance == "prompt" and now.control_harmless
    from pathlib import Path

    committed = json.loads((Path(__file__).parents[1] / "figures/demo-1.5b/paper/results.json").read_text())["config"]
    assert {k: v for k, v in StudyConfig.from_dict(committed).to_flat().items() if k in v1.to_flat()} == {
        **v1.to_flat(), **{k: committed[k] for k in ("model", "dtype")}}


def test_new_figures_draw_from_the_run(paper_run):
    from persona_refusal.analysis.figures import FIGURES
    from persona_refusal.analysis.report import render_report

    _, res = paper_run
    for name in ("sensitivity", "persona_orthogonal", "gating_judged"):
        fig = FIGURES[name].draw(res)
        assert len(fig.data) > 0, name
        assert FIGURES[name].draw(json.loads(json.dumps(res))).to_json() == fig.to_json(), name  # typed = plain
    names = {t.name for t in FIGURES["gating_judged"].draw(res).data if t.name}
    assert any("harmless prompts" in n for n in names)
    html = render_report(res, {})
    assert "Gating at other strengths" in html and "The persona without its refusal component" in html
    assert "kept per system prompt" in html
