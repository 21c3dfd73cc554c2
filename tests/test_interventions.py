"""interventions: what each edit does to the tiny model's activations, how edits compose,
that weight orthogonalisation equals hook ablation, and hook hygiene (no hook survives
``apply``, also after an exception or Ctrl-C, and unedited logits stay bit-identical).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from persona_refusal import ops
from persona_refusal.activations import cache_activations, plan_batches, run_plan
from persona_refusal.errors import ConfigError, DirectionMismatchError
from persona_refusal.evaluation import last_logits
from persona_refusal.interventions import Ablate, AddVector, AffineEdit, Patch, apply, orthogonalize_weights

SITES = ("resid_pre", "attn_out", "mlp_out")
ALL_RESID = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def _tokens(cm, prompts):
    return cm.tokenize(cm.format(prompts))


def _run_with_cache(cm, prompts, *interventions):
    tokens, mask = _tokens(cm, prompts)
    with apply(cm, *interventions), torch.inference_mode():
        logits, cache = cm.model.run_with_cache(
            tokens, attention_mask=mask, names_filter=lambda n: n.endswith(ALL_RESID))
    return logits, cache, mask


# ----------------------------------------------------------------------------- single edits
def test_ablate_leaves_no_component_at_any_site(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=2)
    r_hat = d.unit
    _, before, _ = _run_with_cache(tiny, prompts)
    assert float((before["blocks.2.hook_resid_pre"] @ r_hat).abs().max()) > 0.1  # there was something to remove
    _, cache, _ = _run_with_cache(tiny, prompts, Ablate(d))
    for layer in range(tiny.n_layers):
        for hook in ALL_RESID:  # the hooked sites, and hence resid_mid/resid_post too
            act = cache[f"blocks.{layer}.{hook}"]
            assert float((act @ r_hat).abs().max()) < 1e-4 * max(1.0, float(act.abs().max())), (layer, hook)


def test_second_ablation_changes_nothing(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=2)
    once = last_logits(tiny, prompts, interventions=[Ablate(d)], progress=False)
    twice = last_logits(tiny, prompts, interventions=[Ablate(d), Ablate(d.rescaled(0.1))], progress=False)
    assert torch.allclose(once, twice, atol=1e-5)
    assert not torch.allclose(once, last_logits(tiny, prompts, progress=False), atol=1e-3)


def test_ablate_restricted_to_layers_and_sites(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=4)
    edit = Ablate(d, layers=[2], sites=["resid_pre"])
    assert [name for name, _ in edit.hooks(tiny)] == ["blocks.2.hook_resid_pre"]
    _, cache, _ = _run_with_cache(tiny, prompts, edit)
    assert float((cache["blocks.2.hook_resid_pre"] @ d.unit).abs().max()) < 1e-4
    assert float((cache["blocks.1.hook_resid_pre"] @ d.unit).abs().max()) > 0.1  # earlier layers untouched
    assert edit.min_layer(tiny) == 2


def test_add_vector_zero_is_identity(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=1)
    tokens, mask = _tokens(tiny, prompts)
    with torch.inference_mode():
        plain = tiny.model(tokens, attention_mask=mask)
        with apply(tiny, AddVector(d, 0.0)):
            zero = tiny.model(tokens, attention_mask=mask)
        with apply(tiny, AddVector(d, 0.5)):
            half = tiny.model(tokens, attention_mask=mask)
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, half, atol=1e-3)


def test_add_vector_adds_at_its_layer(tiny, prompts, make_direction):
    d = make_direction(model=tiny, layer=2, seed=1)
    _, base, mask = _run_with_cache(tiny, prompts)
    _, edited, _ = _run_with_cache(tiny, prompts, AddVector(d, 1.5))
    diff = edited["blocks.2.hook_resid_pre"] - base["blocks.2.hook_resid_pre"]
    real = mask.bool()
    assert torch.allclose(diff[real], (1.5 * d.vector).expand_as(diff[real]), atol=1e-5)
    assert torch.equal(edited["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"])
    # Explicit layer overrides the direction's own.
    assert AddVector(d, 1.0, layer=3).hooks(tiny)[0][0] == "blocks.3.hook_resid_pre"


def test_add_vector_at_n_layers_hooks_the_final_residual(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=1)
    edit = AddVector(d, 1.0, layer=tiny.n_layers)
    assert [name for name, _ in edit.hooks(tiny)] == [f"blocks.{tiny.n_layers - 1}.hook_resid_post"]
    plain = last_logits(tiny, prompts, progress=False)
    assert not torch.allclose(plain, last_logits(tiny, prompts, interventions=[edit], progress=False), atol=1e-3)


@pytest.mark.parametrize("layer", [1, 3])
def test_affine_edit_alpha_zero_pins_projection(tiny, prompts, make_direction, layer):
    d = make_direction(model=tiny, layer=layer, seed=6)
    _, cache, mask = _run_with_cache(tiny, prompts, AffineEdit(d, 0.0))
    proj = cache[f"blocks.{layer}.hook_resid_pre"] @ d.unit
    target = float(d.reference @ d.unit)
    assert torch.allclose(proj, torch.full_like(proj, target), atol=1e-4)  # every position, padding too
    _, cache1, _ = _run_with_cache(tiny, prompts, AffineEdit(d, 1.0))
    proj1 = cache1[f"blocks.{layer}.hook_resid_pre"] @ d.unit
    assert torch.allclose(proj1, torch.full_like(proj1, target + d.norm), atol=1e-4)


def test_affine_edit_needs_a_reference(tiny, make_direction):
    with pytest.raises(ConfigError, match="no reference"):
        with apply(tiny, AffineEdit(make_direction(model=tiny, reference=False), 0.0)):
            pass


def test_layer_directions_use_their_own_layer(tiny, prompts, make_direction):
    from persona_refusal.directions import LayerDirections

    vecs = torch.stack([make_direction(model=tiny, seed=s).vector for s in range(4)])
    ld = LayerDirections(vectors=vecs, layers=(0, 1, 2, 3), model_id=tiny.model_id, model_checksum=tiny.checksum)
    _, cache, _ = _run_with_cache(tiny, prompts, Ablate(ld))
    for layer in range(4):
        act = cache[f"blocks.{layer}.hook_resid_pre"]
        assert float((act @ ops.unit(vecs[layer])).abs().max()) < 1e-4
    with pytest.raises(ConfigError, match="explicit layer"):
        with apply(tiny, AddVector(ld, 1.0)):
            pass
    edit = AddVector(ld, 1.0, layer=2)
    _, base, _ = _run_with_cache(tiny, prompts)
    _, added, _ = _run_with_cache(tiny, prompts, edit)
    diff = added["blocks.2.hook_resid_pre"] - base["blocks.2.hook_resid_pre"]
    assert torch.allclose(diff[0, -1], vecs[2], atol=1e-5)


# ----------------------------------------------------------------------------- weights
def test_orthogonalized_weights_equal_hook_ablation(tiny, prompts, make_direction):
    d = make_direction(model=tiny, seed=9)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    ortho = orthogonalize_weights(tiny, d)
    assert ortho is not tiny and ortho.model is not tiny.model
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())  # original untouched
    hooked = last_logits(tiny, prompts, interventions=[Ablate(d)], progress=False)
    weights = last_logits(ortho, prompts, progress=False)
    assert torch.allclose(hooked, weights, atol=1e-4), float((hooked - weights).abs().max())
    assert not torch.allclose(weights, last_logits(tiny, prompts, progress=False), atol=1e-3)
    # The edited model's residual stream has no component along r̂ anywhere.
    _, cache, _ = _run_with_cache(ortho, prompts)
    assert max(float((a @ d.unit).abs().max()) for a in cache.values()) < 1e-4
    assert (ortho.model_id, ortho.refusal_token_ids, ortho.stop_token_ids) == (
        tiny.model_id, tiny.refusal_token_ids, tiny.stop_token_ids)


def test_orthogonalize_inplace(fresh_tiny, prompts, make_direction):
    d = make_direction(model=fresh_tiny, seed=9)
    hooked = last_logits(fresh_tiny, prompts, interventions=[Ablate(d)], progress=False)
    w_e = fresh_tiny.model.W_E.detach().clone()
    assert orthogonalize_weights(fresh_tiny, d, inplace=True) is fresh_tiny
    assert not torch.equal(fresh_tiny.model.W_E, w_e)
    assert torch.allclose(last_logits(fresh_tiny, prompts, progress=False), hooked, atol=1e-4)


def test_orthogonalize_checks_the_direction(tiny, make_direction):
    with pytest.raises(DirectionMismatchError):
        orthogonalize_weights(tiny, make_direction(32))
    foreign = make_direction().replace(model_id="someone/else")
    with pytest.raises(DirectionMismatchError):
        orthogonalize_weights(tiny, foreign)
    assert orthogonalize_weights(tiny, foreign, allow_transfer=True).model is not tiny.model


# ----------------------------------------------------------------------------- patching
def test_patch_reproduces_an_edited_run(tiny, prompts, make_direction):
    edit = AddVector(make_direction(model=tiny, layer=1, seed=3), 2.0)
    hook = "blocks.3.hook_resid_post"
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=2)  # sorted: rows are not in prompt order
    assert torch.cat([b.rows for b in plan.batches]).tolist() != list(range(len(prompts)))
    source = torch.zeros(len(prompts), 1, tiny.d_model)
    for o in run_plan(tiny, plan, interventions=[edit], capture={hook: [-1]}, progress=False):
        source[o.batch.rows] = o.captured[hook]
    edited = last_logits(tiny, prompts, interventions=[edit], progress=False)
    plain = last_logits(tiny, prompts, progress=False)
    for batch_size in (None, 2):
        patched = last_logits(tiny, prompts, interventions=[Patch(hook, source, (-1,))], batch_size=batch_size,
                              progress=False)
        assert torch.allclose(patched, edited, atol=1e-4)
    assert not torch.allclose(plain, edited, atol=1e-3)


def test_patch_writes_the_cached_values_at_its_positions(tiny, prompts, make_direction):
    positions, layer = [-3, -1], 2
    edit = AddVector(make_direction(model=tiny, layer=1, seed=3), 2.0)
    source = cache_activations(tiny, prompts, positions=positions, layers=[layer], interventions=[edit],
                               progress=False)[:, :, 0]
    patch = Patch(f"blocks.{layer}.hook_resid_pre", source, positions)
    got = cache_activations(tiny, prompts, positions=[-3, -2, -1], layers=[layer], interventions=[patch],
                            progress=False)[:, :, 0]
    plain = cache_activations(tiny, prompts, positions=[-2], layers=[layer], progress=False)[:, :, 0]
    assert torch.allclose(got[:, [0, 2]], source, atol=1e-6)
    assert torch.allclose(got[:, 1], plain[:, 0], atol=1e-5)  # the position in between is not patched


# ----------------------------------------------------------------------------- composition
def test_composition_order(tiny, prompts, make_direction):
    d = make_direction(model=tiny, layer=2, seed=5)
    ablate = Ablate(d, layers=[2], sites=["resid_pre"])
    add = AddVector(d, 1.0)
    hook = "blocks.2.hook_resid_pre"
    _, ablate_then_add, _ = _run_with_cache(tiny, prompts, ablate, add)
    _, add_then_ablate, _ = _run_with_cache(tiny, prompts, add, ablate)
    p1, p2 = ablate_then_add[hook] @ d.unit, add_then_ablate[hook] @ d.unit
    assert torch.allclose(p1, torch.full_like(p1, d.norm), atol=1e-4)  # added after the ablation
    assert float(p2.abs().max()) < 1e-4  # ablated after the addition
    # Two additions commute.
    e = make_direction(model=tiny, layer=2, seed=6)
    ab = last_logits(tiny, prompts, interventions=[AddVector(d, 0.5), AddVector(e, -1.0)], progress=False)
    ba = last_logits(tiny, prompts, interventions=[AddVector(e, -1.0), AddVector(d, 0.5)], progress=False)
    assert torch.allclose(ab, ba, atol=1e-5)


# ----------------------------------------------------------------------------- hook hygiene
def test_no_hook_left_after_apply(tiny, prompts, make_direction, assert_no_hooks):
    d = make_direction(model=tiny)
    tokens, _ = _tokens(tiny, prompts[:1])
    with apply(tiny, Ablate(d), AddVector(d, 1.0), AffineEdit(d, 0.0)) as cm:
        assert cm is tiny
        assert sum(len(hp.fwd_hooks) for hp in tiny.model.hook_dict.values()) == 4 * 3 + 1 + 1
        tiny.model(tokens)
    assert_no_hooks(tiny.model)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hook_left_after_an_exception_inside_apply(tiny, make_direction, assert_no_hooks, exc):
    d = make_direction(model=tiny)
    with pytest.raises(type(exc)):
        with apply(tiny, Ablate(d), AddVector(d, 1.0)):
            raise exc
    assert_no_hooks(tiny.model)


def test_no_hook_left_after_an_exception_inside_a_hook(tiny, prompts, assert_no_hooks):
    too_few_rows = Patch("blocks.1.hook_resid_pre", torch.zeros(2, 1, tiny.d_model), (-1,))
    with pytest.raises(Exception):  # raised inside the hook, mid forward pass
        last_logits(tiny, prompts, interventions=[too_few_rows], progress=False)
    assert_no_hooks(tiny.model)
    assert tiny._state.phase == "full" and tiny._state.rows is None
    # Called directly (no runner), the batch must hold every prompt: a one-line ConfigError.
    tokens, _ = _tokens(tiny, prompts)
    with pytest.raises(ConfigError, match="2 rows for a batch of 5"):
        with apply(tiny, too_few_rows), torch.inference_mode():
            tiny.model(tokens)
    assert_no_hooks(tiny.model)


def test_invalid_intervention_adds_no_hook(tiny, make_direction, assert_no_hooks, no_typecheck):
    good, bad = make_direction(model=tiny), make_direction(32)
    with pytest.raises(DirectionMismatchError):
        with apply(tiny, Ablate(good), Ablate(bad)):
            pass
    assert_no_hooks(tiny.model)
    with no_typecheck(), pytest.raises(ConfigError):
        with apply(tiny, "not an intervention"):
            pass


def test_unedited_logits_are_bitwise_stable(tiny, prompts, make_direction):
    tokens, mask = _tokens(tiny, prompts)
    with torch.inference_mode():
        before = tiny.model(tokens, attention_mask=mask)
    d = make_direction(model=tiny, seed=8)
    last_logits(tiny, prompts, interventions=[Ablate(d)], progress=False)
    last_logits(tiny, prompts, interventions=[AddVector(d, 3.0), AffineEdit(d, 1.0)], progress=False)
    with pytest.raises(RuntimeError):
        with apply(tiny, Ablate(d)):
            raise RuntimeError
    orthogonalize_weights(tiny, d)
    with torch.inference_mode():
        after = tiny.model(tokens, attention_mask=mask)
    assert torch.equal(before, after)


# ----------------------------------------------------------------------------- validation
def test_validation_errors(tiny, prompts, make_direction, no_typecheck):
    d = make_direction(model=tiny)

    def check(edit, error=ConfigError, match=None):
        with pytest.raises(error, match=match) as info:
            with apply(tiny, edit):
                pass
        assert "\n" not in str(info.value)

    check(Ablate(make_direction(32, model=tiny)), DirectionMismatchError, "width 32")
    check(AddVector(make_direction(32), 1.0), DirectionMismatchError)
    check(AffineEdit(make_direction(32), 0.0), DirectionMismatchError)
    check(Ablate(make_direction().replace(model_id="someone/else")), DirectionMismatchError, "allow_transfer")
    with apply(tiny, Ablate(make_direction().replace(model_id="someone/else"), allow_transfer=True)):
        pass
    check(AddVector(d, 1.0, layer=5), match="out of range")
    check(AddVector(d.replace(layer=7), 1.0), match="out of range")
    check(Ablate(d, layers=[4]), match="out of range")
    check(AffineEdit(d, 0.0, layers=[-1]), match="out of range")
    for bad in (float("nan"), float("inf"), -float("inf")):  # refused when the edit is made
        with pytest.raises(ConfigError, match="coeff must be a finite number"):
            AddVector(d, bad)
    check(Ablate(d, sites=["resid_pre", "hook_z"]), match="unknown hook sites")
    check(Patch("blocks.1.hook_nothing", torch.zeros(5, 1, 64)), match="unknown hook point")
    check(Patch("blocks.1.hook_resid_pre", torch.zeros(5, 2, 64), (-1,)), match="patch source")
    check(Patch("blocks.1.hook_resid_pre", torch.zeros(5, 1, 64), (0,)), match="negative")
    with no_typecheck():  # a 2-D source is caught by the package itself too
        with pytest.raises(ConfigError, match=r"Patch: source must be a 3-d tensor \(n_prompts n_pos d\), got Tensor of shape \(5, 64\)"):
            Patch("blocks.1.hook_resid_pre", torch.zeros(5, 64), (-1,))
        with pytest.raises(ConfigError, match="Ablate: direction must be a Direction or a LayerDirections, got str"):
            Ablate("not a direction")


def test_describe_is_json(tiny, make_direction):
    d = make_direction(model=tiny, layer=2)
    edits = [Ablate(d), Ablate(d, layers=(1, 2), sites=("resid_pre",)), AddVector(d, 2.0, layer=3),
             AffineEdit(d, 0.5), Patch("blocks.1.hook_resid_pre", torch.zeros(2, 1, 64), (-1,))]
    described = [e.describe() for e in edits]
    assert json.loads(json.dumps(described)) == described
    assert [x["type"] for x in described] == ["Ablate", "Ablate", "AddVector", "AffineEdit", "Patch"]
    assert described[1]["layers"] == [1, 2] and described[2]["coeff"] == 2.0 and described[0]["direction"] == "test"


def test_interventions_are_frozen(make_direction):
    edit = AddVector(make_direction(), 1.0)
    with pytest.raises(Exception):
        edit.coeff = 2.0  # type: ignore[misc]
    assert copy.copy(edit).coeff == 1.0


# ----------------------------------------------------------------------------- hooks run ops
def test_hooks_compute_exactly_the_ops_functions(tiny, make_direction):
    """The maths the hooks run is the property-tested maths of ``ops``, to the bit."""
    from persona_refusal.directions import LayerDirections

    d = make_direction(model=tiny, layer=1, seed=3)
    g = torch.Generator().manual_seed(5)
    ld = LayerDirections(vectors=torch.randn(tiny.n_layers, tiny.d_model, generator=g), layers=tuple(range(tiny.n_layers)),
                         references=torch.randn(tiny.n_layers, tiny.d_model, generator=g), model_id=tiny.model_id)
    for shape in [(tiny.d_model,), (3, tiny.d_model), (2, 5, tiny.d_model)]:
        act = torch.randn(*shape, generator=g) * 4
        (_, ablate), *_ = Ablate(d).hooks(tiny)
        assert torch.equal(ablate(act, hook=None), ops.project_out(act, d.vector))
        (_, add), = AddVector(ld, 2.5, layer=2).hooks(tiny)
        assert torch.equal(add(act, hook=None), ops.add_vector(act, ld.vector_at(2), 2.5))
        (_, affine), = AffineEdit(d, 0.5).hooks(tiny)
        assert torch.equal(affine(act, hook=None), ops.affine_edit(act, d.vector, d.reference, 0.5))


# ----------------------------------------------------------------------------- non-finite numbers and overflow
def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("make", [
    lambda d: AddVector(d, float("nan")),
    lambda d: AddVector(d, float("-inf")),
    lambda d: AffineEdit(d, float("nan")),
    lambda d: AffineEdit(d, float("inf")),
], ids=["add-nan", "add-inf", "affine-nan", "affine-inf"])
def test_non_finite_strengths_are_refused_when_made(make_direction, make):
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        make(make_direction())
    _one_line(info)


def test_coefficients_of_any_number_type_are_floats(tiny, prompts, make_direction, no_typecheck):
    import numpy as np

    d = make_direction(model=tiny, seed=6)
    want = last_logits(tiny, prompts, interventions=[AddVector(d, 2.0)], progress=False)
    with no_typecheck():  # the annotation says float; what users pass without the test hook
        for coeff in (torch.tensor(2.0), torch.tensor(2, dtype=torch.int32), np.float32(2.0), np.float64(2.0), np.int64(2), 2):
            edit = AddVector(d, coeff)
            assert type(edit.coeff) is float and edit.coeff == 2.0 and edit.describe()["coeff"] == 2.0
            assert torch.equal(last_logits(tiny, prompts, interventions=[edit], progress=False), want)
        assert AffineEdit(d, torch.tensor(0.5)).alpha == 0.5 and type(AffineEdit(d, np.float32(0.5)).alpha) is float
        for bad, shown in ((torch.tensor([2.0]), "a tensor of shape (1,)"), ("2", "'2'"), (True, "True"),
                           (torch.tensor(float("nan")), "nan"), (None, "None")):
            with pytest.raises(ConfigError, match="coeff must be a finite number") as info:
                AddVector(d, bad)
            assert shown in _one_line(info)
        with pytest.raises(ConfigError, match="AddVector layer must be an integer, got 2.7"):
            AddVector(d, 1.0, layer=2.7)  # not truncated to 2
        assert AddVector(d, 1.0, layer=np.int64(2)).layer == 2
        with pytest.raises(ConfigError, match="layers must be a sequence of integers or None, got list whose item 0 is float 1.5"):
            Ablate(d, layers=[1.5])
        with pytest.raises(ConfigError, match="positions must be a sequence of integers, got tuple whose item 0 is float -1.5"):
            Patch("blocks.1.hook_resid_pre", torch.zeros(2, 1, 64), (-1.5,))


def _poison(t: torch.Tensor, value: float) -> None:
    t[3] = value  # in place, after the direction was made and checked


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_vectors_are_refused_before_any_hook(tiny, make_direction, assert_no_hooks, value):
    from persona_refusal.directions import LayerDirections

    for which, make in (("vector", lambda d: Ablate(d)), ("vector", lambda d: AddVector(d, 1.0)),
                        ("vector", lambda d: AffineEdit(d, 0.0)), ("reference mean", lambda d: AffineEdit(d, 0.0))):
        d = make_direction(model=tiny, seed=7)
        _poison(d.vector if which == "vector" else d.reference, value)
        with pytest.raises(ConfigError, match=rf"direction 'test' has a non-finite {which} \(NaN or inf\)") as info:
            with apply(tiny, make(d)):
                pass
        _one_line(info)
        assert_no_hooks(tiny.model)
    ld = LayerDirections(vectors=torch.ones(tiny.n_layers, 64), layers=tuple(range(tiny.n_layers)), model_id=tiny.model_id)
    ld.vectors[2, 0] = value
    with pytest.raises(ConfigError, match="non-finite vector at layer 2"):
        with apply(tiny, Ablate(ld)):
            pass
    with apply(tiny, AddVector(ld, 1.0, layer=1)):  # a layer without the bad row is fine
        pass
    source = torch.zeros(2, 1, 64)
    source[1, 0, 5] = value
    with pytest.raises(ConfigError, match="patch source for blocks.1.hook_resid_pre holds NaN or inf"):
        with apply(tiny, Patch("blocks.1.hook_resid_pre", source)):
            pass


def test_a_direction_with_a_non_finite_reference_is_refused(no_typecheck):
    from persona_refusal.directions import Direction, LayerDirections

    with pytest.raises(ConfigError, match="reference mean must be finite"):
        Direction(vector=torch.ones(4), layer=1, reference=torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ConfigError, match="reference means must be finite"):
        LayerDirections(vectors=torch.ones(2, 4), layers=(0, 1), references=torch.full((2, 4), float("inf")))
    with pytest.raises(ConfigError, match="per-layer vectors must be finite"):
        LayerDirections(vectors=torch.full((2, 4), float("nan")), layers=(0, 1))


def test_additions_that_overflow_are_refused(tiny, prompts, make_direction, assert_no_hooks):
    d = make_direction(model=tiny, seed=9)  # |v| ≈ 24
    big = 2e38 / d.norm  # |c·v| = 2e38: finite in float32, two of them are not
    with pytest.raises(ConfigError, match=r"AddVector \(coeff=1e\+38, layer 1\) adds a vector of norm .*, which overflows "
                                          r"float32 \(largest 3\.4e\+38\) \(use a smaller strength\)") as info:
        with apply(tiny, AddVector(d, 1e38)):
            pass
    _one_line(info)
    with pytest.raises(ConfigError, match="AffineEdit .* overflows float32"):
        with apply(tiny, AffineEdit(d, 1e38)):
            pass
    logits = last_logits(tiny, prompts, interventions=[AddVector(d, big)], progress=False)
    assert bool(torch.isfinite(logits).all())  # one of them: accepted, and finite logits
    with pytest.raises(ConfigError, match=r"the 2 edits together add vectors of norm up to 4e\+38, which overflows "
                                          r"float32 .*\(use smaller strengths or fewer additions\)") as info:
        last_logits(tiny, prompts, interventions=[AddVector(d, big), AddVector(d, big, layer=2)], progress=False)
    _one_line(info)
    assert_no_hooks(tiny.model)
    from persona_refusal.evaluation import generate_conditions

    with pytest.raises(ConfigError, match="the 2 edits together"):  # per condition in a multi-condition batch
        generate_conditions(tiny, prompts[:1], [[AddVector(d, big)], [AddVector(d, big), AddVector(d, big, layer=2)]],
                            max_new_tokens=1, progress=False)
    assert_no_hooks(tiny.model)
