"""gating_experiment: the study's gating sweep as one function, on the tiny model.

The same inputs give the study's ``gating`` rows (one loop, one restoration arithmetic);
a planted re-add that cancels the persona gives restoration 1 and a zero re-add gives 0;
``.figure()`` is the report's gating figure of the same data; judged replies give the
``gating_judged`` shape and its figure.
"""

from __future__ import annotations

import math

import pytest

import persona_refusal as pr
from persona_refusal.analysis import FIGURES
from persona_refusal.directions import Direction, LayerDirections
from persona_refusal.study import StudyConfig

from conftest import run_smoke_study


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke study on the tiny model, its results and its directions."""
    out = tmp_path_factory.mktemp("smoke")
    run_smoke_study(out)
    return out, pr.load_results(out)


def _same(a, b) -> None:
    """Rows equal, floats to 1e-9 (the study starts points mid-model from cached streams)."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, list):
            assert len(x) == len(y), k
            for u, v in zip(x, y):
                assert (u is None and v is None) or u == pytest.approx(v, abs=1e-9), k
        elif isinstance(x, float):
            assert x == pytest.approx(y, abs=1e-9), k
        else:
            assert x == y, k


def test_the_study_stage_and_the_function_give_the_same_rows(tiny, smoke):
    out, results = smoke
    cfg = StudyConfig.preset("smoke", model="tiny")
    refusal = Direction.load(out / "directions" / "refusal", chat_model=tiny)
    persona = LayerDirections.load(out / "directions" / "persona", chat_model=tiny)
    layers = results.resolved_layers
    prompts = list(pr.bundled("harmful", "test"))[: cfg.n_sweep]
    exp = pr.gating_experiment(tiny, persona, refusal, prompts, layers=layers.gating_layers,
                               alpha=results.steering.persona_alpha, betas=sorted({g.beta for g in results.gating}),
                               persona_layer=results.steering.persona_layer, control=False,
                               n_boot=cfg.bootstrap, seed=cfg.seed, batch_size=cfg.batch_size)
    assert len(exp.rows) == len(results.gating) > 0
    for mine, theirs in zip(exp.rows, results.gating):
        _same(mine, theirs)
    for side in ("baseline", "persona"):
        _same(exp.results.sweep[side], results.sweep[side])


def test_a_re_add_that_cancels_the_persona_restores_everything_and_a_zero_one_nothing(tiny):
    persona = Direction(vector=_vector(tiny, 0), layer=2, name="persona")
    prompts = list(pr.bundled("harmful", "test"))[:4]
    # the "refusal" direction is the persona itself, re-added with -α at the persona layer: the edits cancel
    exp = pr.gating_experiment(tiny, persona, persona, prompts, layers=[2, 3], alpha=2.0, betas=[-2.0, 0.0],
                               control=False, n_boot=50, progress=False)
    by = {(r.beta, r.layer): r for r in exp.rows}
    assert by[(-2.0, 2)].score_restoration == pytest.approx(1.0, abs=1e-4)
    assert by[(0.0, 2)].score_restoration == 0.0 and by[(0.0, 3)].score_restoration == 0.0
    assert not math.isclose(by[(-2.0, 3)].score_restoration, 1.0, abs_tol=1e-3)  # not cancelled after the persona layer
    assert "restoration" in exp.summary() and "<table>" in exp._repr_html_()


def _vector(cm, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(cm.d_model, generator=g)


def test_figure_is_the_reports_gating_figure(tiny, smoke):
    out, results = smoke
    refusal = Direction.load(out / "directions" / "refusal", chat_model=tiny)
    persona = LayerDirections.load(out / "directions" / "persona", chat_model=tiny)
    exp = pr.gating_experiment(tiny, persona, refusal, list(pr.bundled("harmful", "test"))[:4], layers=[0, 2, 3],
                               cells={"late": [3]}, n_boot=50, progress=False)
    fig = exp.figure()
    assert fig.to_json() == FIGURES["gating"].draw(exp.results).to_json()
    assert fig.layout.title.text.startswith("Re-adding refusal under persona steering")
    names = [t.name for t in fig.data]
    assert any(n and n.startswith("control") for n in names)  # the control sweep is drawn
    assert [c.cell for c in exp.cells] == ["late"] and exp.cells[0].layers == [3]


def test_judged_replies_have_the_judged_sweeps_shape_and_figure(tiny, smoke):
    out, _ = smoke
    refusal = Direction.load(out / "directions" / "refusal", chat_model=tiny)
    persona = LayerDirections.load(out / "directions" / "persona", chat_model=tiny)
    exp = pr.gating_experiment(tiny, persona, refusal, list(pr.bundled("harmful", "test"))[:3], layers=[1, 3],
                               measure="judged", cells={"early": [1], "paired": [2, 3]}, max_new_tokens=4,
                               n_boot=50, progress=False)
    gj = exp.results.gating_judged
    assert [r.layer for r in exp.rows] == [1, 3] and set(gj.judges) == {"strict", "lenient"}
    assert [(c.cell, c.beta) for c in exp.cells] == [("early", 2.0), ("paired", 2.0)]
    assert [c.cell for c in exp.control] == ["early", "paired"]
    assert exp.rows[0].strict.refusal.n == 3
    assert exp.figure().to_json() == FIGURES["gating_judged"].draw(exp.results).to_json()


def test_bad_arguments_are_refused(tiny):
    d = Direction(vector=_vector(tiny, 1), layer=1, name="d")
    with pytest.raises(pr.ConfigError, match="headline judge"):
        pr.gating_experiment(tiny, d, d, ["Hi"], measure="judged", judge="model", progress=False)
    with pytest.raises(pr.ConfigError, match="out of range"):
        pr.gating_experiment(tiny, d, d, ["Hi"], layers=[99], progress=False)
