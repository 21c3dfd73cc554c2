"""persona_refusal.study.gating.context: the sweep primitive, where each point starts, and its caches."""

from __future__ import annotations

import pytest
import torch

from conftest import no_typecheck
from persona_refusal.activations import run_plan
from persona_refusal.evaluation import first_token_refusal
from persona_refusal.interventions import AddVector
from persona_refusal.study import Study, StudyConfig


@pytest.fixture(scope="module")
def ctx(tiny, tmp_path_factory):
    """A study context on the tiny model (4 layers, persona at layer 2) with its sweep caches."""
    cfg = StudyConfig.preset("smoke", model="tiny", n_train=8, n_val=4, n_eval=6, n_sweep=4, n_coherence=2,
                             persona_questions=2, persona_layer=2)
    with no_typecheck():
        study = Study(tiny, cfg, tmp_path_factory.mktemp("ctx") / "run", progress=False, stages=["sweep_caches"])
        study.run()
    return study.ctx


def _from_scratch(ctx, interventions):
    scores = torch.zeros(ctx.sweep_plan.n_prompts, dtype=torch.float64)
    for o in run_plan(ctx.cm, ctx.sweep_plan, interventions=interventions, logits=True, progress=False):
        scores[o.batch.rows] = first_token_refusal(o.last_logits, ctx.cm.refusal_token_ids)[1]
    return scores


def test_each_point_starts_after_the_edits_it_shares_with_a_cache(ctx):
    P = ctx.persona_layer
    assert P == 2 and ctx.cm.n_layers == 4
    assert ctx.start_for([ctx.steer(), ctx.readd(2.0, 1)]) == (1, "baseline")  # re-add before the persona
    assert ctx.start_for([ctx.steer(), ctx.readd(2.0, P)]) == (P, "baseline")  # at it: the persona cache holds it
    assert ctx.start_for([ctx.steer(), ctx.readd(2.0, 3)]) == (3, "persona")   # after it: resume the persona run
    assert ctx.start_for([ctx.readd(2.0, 3)]) == (3, "baseline")
    assert ctx.start_for([ctx.steer()]) == (3, "persona")                      # the cached condition itself
    assert ctx.start_for([ctx.steer(alpha=1.0)]) == (P, "baseline")             # another strength: not the cache
    lookalike = AddVector(ctx.result("steering").persona_vector, ctx.cfg.persona_alpha, layer=P)
    assert ctx.start_for([lookalike, ctx.readd(2.0, 3)]) == (P, "baseline")     # edits are matched by identity


def test_builders_memoise(ctx):
    assert ctx.steer() is ctx.steer(ctx.cfg.persona_alpha, ctx.persona_layer)
    assert ctx.readd(2.0, 1) is ctx.readd(2.0, 1) and ctx.readd(2.0, 1) is not ctx.readd(1.0, 1)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_a_point_started_mid_model_equals_the_full_forward(ctx, layer):
    ivs = [ctx.steer(), ctx.readd(2.0, layer)]
    got = torch.tensor(ctx.score(ivs)["scores"], dtype=torch.float64)
    torch.testing.assert_close(got, _from_scratch(ctx, ivs), atol=1e-5, rtol=1e-5)


def test_sweep_checkpoints_each_point_and_resumes(ctx, monkeypatch):
    points = {f"t@{l}": [ctx.readd(1.0, l)] for l in (1, 3)}
    first = ctx.sweep("test_sweep", points)
    assert set(first) == set(points) and ctx.store.count("test_sweep") == 2

    def boom(*a, **k):
        raise AssertionError("a checkpointed point was recomputed")

    monkeypatch.setattr(type(ctx), "score", boom)
    assert ctx.sweep("test_sweep", points) == first


def test_cache_with_the_same_edits_is_shared(ctx):
    c = ctx.cache("persona_again", [ctx.steer()], [3])
    assert c is ctx.caches["persona"]
    ctx.drop_cache("persona_again")
    assert "persona_again" not in ctx.caches and "persona" in ctx.caches


def test_summarise_adds_restoration_against_the_two_caches(ctx):
    b = ctx.caches["baseline"]
    s = ctx.summarise({"refused": b.refused, "scores": b.scores})
    assert s["score_restoration"] == pytest.approx(1.0)
