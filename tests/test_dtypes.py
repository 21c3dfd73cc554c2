"""Reduced precision and other devices, without a GPU: the tiny model in bfloat16 and
float16 on the CPU, and edits that follow the activation's dtype and device.

The rules checked: directions stay float32 on the CPU; each hook's operands are derived in
float32 and cast once to the model's dtype; the tensor maths of :mod:`persona_refusal.ops`
returns the activation's dtype on the activation's device (the ``meta`` device stands in
for a GPU here); what the runners keep (captured activations, logits, scores) is float32
or float64 on the CPU whatever the model's dtype; a study refuses a model loaded in
another dtype than its configuration says.
"""

from __future__ import annotations

import pytest
import torch

import persona_refusal as pr
from persona_refusal import ops
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import generate_conditions, last_logits
from persona_refusal.hooks import RunState, for_condition
from persona_refusal.interventions import Ablate, AddVector, AffineEdit, apply
from persona_refusal.study import StudyConfig, StudyContext

ALL_RESID = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def low(request) -> pr.ChatModel:
    """The tiny model in a reduced-precision dtype, on the CPU."""
    return pr.load_chat_model("tiny", device="cpu", dtype=request.param, progress=False)


def test_ops_return_the_activations_dtype_and_device():
    r = torch.randn(8, generator=torch.Generator().manual_seed(0))  # float32, CPU: as directions are stored
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    r_hat = ops.unit(r)
    out = ops.project_out_unit(x, r_hat)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ops.project_out_unit(x, r_hat.to(torch.bfloat16)))
    assert ops.add_vector(x, r, 2.0).dtype == torch.bfloat16
    assert ops.affine_edit_unit(x, r_hat, ops.affine_offset(r, r, 0.5)).dtype == torch.bfloat16
    assert ops.projection(x, r).dtype == torch.bfloat16
    # another device (meta stands in for a GPU): the float32 CPU operands follow the activation
    xm = torch.empty(3, 8, device="meta", dtype=torch.float16)
    for out in (ops.project_out_unit(xm, r_hat), ops.project_out(xm, r), ops.add_vector(xm, r, 2.0),
                ops.affine_edit(xm, r, r, 1.0), ops.affine_edit_unit(xm, r_hat, r)):
        assert out.device.type == "meta" and out.dtype == torch.float16


def test_hook_operands_are_derived_in_float32_then_cast(low, make_direction):
    d = make_direction(model=low, layer=2, seed=3)
    x = torch.randn(2, 5, low.d_model, generator=torch.Generator().manual_seed(4)).to(low.model.cfg.dtype)
    v = d.vector.float()
    [(_, ablate), *_] = Ablate(d, layers=[2]).hooks(low)
    assert torch.equal(ablate(x.clone(), hook=None), ops.project_out_unit(x, ops.unit(v).to(x.dtype)))
    [(_, affine)] = AffineEdit(d, 0.5).hooks(low)
    expected = ops.affine_edit_unit(x, ops.unit(v).to(x.dtype), ops.affine_offset(v, d.reference, 0.5).to(x.dtype))
    assert torch.equal(affine(x.clone(), hook=None), expected)
    [(_, add)] = AddVector(d, 2.0).hooks(low)
    assert add(x.clone(), hook=None).dtype == x.dtype


def test_ablation_in_reduced_precision_leaves_only_rounding(low, prompts, make_direction):
    d = make_direction(model=low, seed=2)
    r_hat = d.unit
    tokens, mask = low.tokenize(low.format(prompts))
    with apply(low, Ablate(d)), torch.inference_mode():
        _, cache = low.model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: n.endswith(ALL_RESID))
    eps = torch.finfo(low.model.cfg.dtype).eps
    for layer in range(low.n_layers):
        for hook in ALL_RESID:
            act = cache[f"blocks.{layer}.{hook}"]
            assert act.dtype == low.model.cfg.dtype
            left = float((act.float() @ r_hat).abs().max())
            assert left <= 4 * eps * float(act.float().norm(dim=-1).max()), (layer, hook, left)


def test_runners_keep_float32_and_float64_on_the_cpu(low, prompts, make_direction):
    d = make_direction(model=low, seed=5)
    means = pr.mean_activations(low, prompts, positions=[-1], layers=[1, 3], progress=False)
    cached = pr.cache_activations(low, prompts, positions=[-1], layers=[2], progress=False)
    logits = last_logits(low, prompts, interventions=[AddVector(d, 2.0)], progress=False)
    assert (means.dtype, cached.dtype, logits.dtype) == (torch.float64, torch.float32, torch.float32)
    assert {t.device.type for t in (means, cached, logits)} == {"cpu"}
    assert bool(torch.isfinite(means).all() and torch.isfinite(logits).all())
    gens = generate_conditions(low, prompts[:3], [[], [Ablate(d)], [AddVector(d, 2.0, layer=1)]], max_new_tokens=3,
                               progress=False)
    for g in gens:
        assert len(g.texts) == 3 and g.first_scores.dtype == torch.float64
        assert bool(torch.isfinite(g.first_scores).all())


def test_multi_condition_rows_are_worked_out_once_per_batch():
    state = RunState(conditions=torch.tensor([0, 1, 1]))
    cpu = torch.device("cpu")
    rows = state.condition_rows(1, cpu)
    assert rows.tolist() == [1, 2] and state.condition_rows(1, cpu) is rows  # memoised
    assert state.condition_rows(2, cpu) is False
    state.conditions = torch.tensor([1, 1, 1])  # another batch: worked out again
    assert state.condition_rows(1, cpu) is True
    hook = for_condition(lambda act, hook: act + 1, 0, state)
    with state.use("full", None, torch.tensor([0, 1, 0])):
        assert hook(torch.zeros(3, 2), hook=None)[:, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="outside a multi-condition batch"):
        RunState().condition_rows(0, cpu)


def test_a_study_refuses_a_model_in_another_dtype(tmp_path):
    cm = pr.load_chat_model("tiny", device="cpu", dtype="bfloat16", progress=False)
    with pytest.raises(ConfigError, match=r"the model runs in bfloat16 but the configuration says dtype 'float32' "
                                          r"\(load the model with dtype='float32', or set dtype='bfloat16'"):
        StudyContext(cm, StudyConfig.preset("smoke", model="tiny"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    ctx = StudyContext(cm, StudyConfig.preset("smoke", model="tiny", dtype="bfloat16"), tmp_path / "ok",
                       progress=False)
    ctx.store.close()
    assert ctx.config_record["config"]["dtype"] == "bfloat16" and "device" not in ctx.config_record["config"]
