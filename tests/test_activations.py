"""activations: the batched, prefix-sharing runner against plain unbatched forward passes.

Whatever the batching (shared prefix or not, one prompt per batch or many, mixed system
prompts, resuming mid-model, splitting a batch after running out of memory), the
numbers must equal those of running each prompt alone through ``cm.model``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from jaxtyping import Float

import persona_refusal as pr
from persona_refusal import activations
from persona_refusal.activations import cache_activations, mean_activations, plan_batches, run_plan
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import last_logits
from persona_refusal.interventions import AddVector

ATOL = 1e-4


def _plan_logits(cm, plan, **kwargs) -> torch.Tensor:
    out = torch.full((plan.n_prompts, cm.model.cfg.d_vocab), float("nan"))
    for o in run_plan(cm, plan, logits=True, progress=False, **kwargs):
        out[o.batch.rows] = o.last_logits
    assert not out.isnan().any()
    return out


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_runner_logits_equal_unbatched_full_forward(tiny, prompts, full_forward_last_logits, share_prefix, batch_size):
    texts = tiny.format(prompts)
    plan = plan_batches(tiny, texts, share_prefix=share_prefix, batch_size=batch_size)
    if share_prefix:
        assert all(b.prefix.numel() > 0 for b in plan.batches)  # the shared path really runs
    else:
        assert all(b.prefix.numel() == 0 for b in plan.batches)
    assert any(not bool(b.mask.all()) for b in plan.batches)  # and so does left padding
    got = _plan_logits(tiny, plan)
    want = full_forward_last_logits(tiny, texts)
    assert torch.allclose(got, want, atol=ATOL), float((got - want).abs().max())


def test_mixed_system_prompts_in_one_plan(tiny, prompts, full_forward_last_logits):
    texts = (tiny.format(prompts[:3], system="You are a pirate.") + tiny.format(prompts[2:], system=None)
             + tiny.format(prompts[:2], system="Be brief."))
    plan = plan_batches(tiny, texts)
    got = _plan_logits(tiny, plan)
    assert torch.allclose(got, full_forward_last_logits(tiny, texts), atol=ATOL)
    # Same instruction, different system prompt: different logits (the system prompt is seen).
    assert not torch.allclose(got[2], got[3], atol=1e-3)


def test_last_logits_rows_are_in_prompt_order(tiny, prompts, full_forward_last_logits):
    got = last_logits(tiny, prompts, progress=False)
    assert isinstance(got, Float[torch.Tensor, "5 384"])
    assert torch.allclose(got, full_forward_last_logits(tiny, tiny.format(prompts)), atol=ATOL)
    reversed_ = last_logits(tiny, prompts[::-1], progress=False)
    assert torch.allclose(reversed_.flip(0), got, atol=ATOL)


def test_cache_activations_equal_run_with_cache(tiny, prompts):
    positions, layers = [-3, -1], [0, 2, 3]
    acts = cache_activations(tiny, prompts, positions=positions, layers=layers, progress=False)
    assert isinstance(acts, Float[torch.Tensor, "5 2 3 64"])
    for i, text in enumerate(tiny.format(prompts)):
        tokens, _ = tiny.tokenize([text])
        with torch.inference_mode():
            _, cache = tiny.model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
        for j, layer in enumerate(layers):
            want = cache[f"blocks.{layer}.hook_resid_pre"][0, positions]
            assert torch.allclose(acts[i, :, j], want, atol=ATOL)


def test_batched_equals_unbatched(tiny, prompts):
    kw = dict(positions=[-2, -1], layers=[1, 3], progress=False)
    for fn in (mean_activations, cache_activations):
        batched, single = fn(tiny, prompts, **kw), fn(tiny, prompts, batch_size=1, **kw)
        assert batched.shape == single.shape
        assert torch.allclose(batched.float(), single.float(), atol=ATOL), fn.__name__


def test_mean_equals_mean_of_cache(tiny, prompts):
    kw = dict(positions=[-5, -1], layers=[0, 1, 2, 3], system="Be helpful.", progress=False)
    mean = mean_activations(tiny, prompts, **kw)
    assert mean.dtype == torch.float64 and isinstance(mean, Float[torch.Tensor, "2 4 64"])
    cached = cache_activations(tiny, prompts, **kw)
    assert torch.allclose(mean, cached.double().mean(0), atol=1e-5)


def test_default_positions_and_layers(tiny, prompts):
    acts = cache_activations(tiny, prompts[:2], progress=False)
    assert acts.shape == (2, len(tiny.post_instruction_positions), tiny.n_layers, tiny.d_model)
    mean = mean_activations(tiny, prompts[:2], progress=False)
    assert mean.shape == acts.shape[1:]


def test_plan_batches_errors(tiny):
    with pytest.raises(ConfigError, match="empty prompt set"):
        plan_batches(tiny, [])
    long = tiny.format(["word " * 600])
    with pytest.raises(ConfigError, match="context window"):
        plan_batches(tiny, tiny.format(["Hi"]) + long)
    ok = tiny.format(["Hi"])
    n = len(tiny.tokenizer(ok[0], add_special_tokens=False)["input_ids"])
    plan_batches(tiny, ok, reserve=512 - n)
    with pytest.raises(ConfigError, match="to generate"):
        plan_batches(tiny, ok, reserve=513 - n)
    with pytest.raises(ConfigError, match="batch_size"):
        plan_batches(tiny, ok, batch_size=0)
    with pytest.raises(ConfigError, match="empty"):
        plan_batches(tiny, ["", "x"])


def test_plan_batches_structure(tiny, prompts):
    texts = tiny.format(prompts)
    plan = plan_batches(tiny, texts, batch_size=2, keep_last=8)
    assert [b.size for b in plan.batches] == [2, 2, 1]
    assert sorted(torch.cat([b.rows for b in plan.batches]).tolist()) == list(range(5))
    ids = [tiny.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert plan.lengths.tolist() == [len(x) for x in ids]
    for b in plan.batches:
        for k, row in enumerate(b.rows.tolist()):
            real = b.tokens[k][b.mask[k].bool()].tolist()
            g = int(b.group[k])
            shared = b.prefix[g][b.prefix_mask[g].bool()].tolist()
            assert shared + real == ids[row]  # its group's prefix + row remainder = the prompt
            assert len(real) >= 8  # keep_last
    # The plan key identifies prompts and batching.
    assert plan.key == plan_batches(tiny, texts, batch_size=2, keep_last=8).key
    assert plan.key != plan_batches(tiny, texts, batch_size=3, keep_last=8).key


def test_run_plan_validation(tiny, prompts):
    plan = plan_batches(tiny, tiny.format(prompts))
    with pytest.raises(ConfigError, match="unknown hook point"):
        list(run_plan(tiny, plan, capture={"blocks.9.hook_resid_pre": None}, progress=False))
    with pytest.raises(ConfigError, match="full model"):
        list(run_plan(tiny, plan, logits=True, stop_at_layer=2, progress=False))
    with pytest.raises(ConfigError, match="one tensor per batch"):
        list(run_plan(tiny, plan, start_layer=2, start_resid=[], progress=False))


def _capture_resid(cm, plan, layer):
    name = f"blocks.{layer}.hook_resid_pre"
    resid, logits = [], torch.zeros(plan.n_prompts, cm.model.cfg.d_vocab)
    for o in run_plan(cm, plan, capture={name: None}, logits=True, progress=False):
        resid.append(o.captured[name])
        logits[o.batch.rows] = o.last_logits
    return resid, logits


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize("start_layer", [1, 2, 3])
def test_resume_mid_model_reproduces_full_run(tiny, prompts, batch_size, start_layer):
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=batch_size)
    resid, full = _capture_resid(tiny, plan, start_layer)
    assert [r.shape[0] for r in resid] == [b.size for b in plan.batches]
    resumed = _plan_logits(tiny, plan, start_layer=start_layer, start_resid=resid)
    assert torch.allclose(resumed, full, atol=ATOL)


@pytest.mark.parametrize("add_layer", [2, 3])
def test_resumed_run_with_edit_equals_full_run_with_edit(tiny, prompts, make_direction, add_layer):
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=3)
    resid, unedited = _capture_resid(tiny, plan, 2)
    edit = AddVector(make_direction(model=tiny, layer=add_layer, seed=5), 1.0)
    full = _plan_logits(tiny, plan, interventions=[edit])
    resumed = _plan_logits(tiny, plan, interventions=[edit], start_layer=2, start_resid=resid)
    assert not torch.allclose(full, unedited, atol=1e-2)  # the edit matters
    assert torch.allclose(resumed, full, atol=ATOL)


def test_stop_at_layer_and_keep_resid(tiny, prompts):
    plan = plan_batches(tiny, tiny.format(prompts))
    name = "blocks.1.hook_resid_post"
    outs = list(run_plan(tiny, plan, capture={name: None}, stop_at_layer=2, keep_resid=True, progress=False))
    for o in outs:
        assert o.last_logits is None and "blocks.2.hook_resid_pre" not in o.captured
        assert torch.equal(o.resid, o.captured[name])  # stopped right after block 1


def _oom_when_larger_than(limit: int, calls: list):
    real = activations._forward

    def fake(chat_model, batch, *args, **kwargs):
        calls.append(batch.size)
        if batch.size > limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(chat_model, batch, *args, **kwargs)

    return fake


def test_out_of_memory_batches_are_split_and_retried(tiny, prompts, monkeypatch, caplog):
    texts = tiny.format(prompts + [p + " Please." for p in prompts])
    plan = plan_batches(tiny, texts)
    assert plan.batches[0].size > 2
    expected_logits = _plan_logits(tiny, plan)
    expected_acts = cache_activations(tiny, prompts, positions=[-2, -1], layers=[1, 2], progress=False)
    calls: list[int] = []
    monkeypatch.setattr(activations, "_forward", _oom_when_larger_than(2, calls))
    with caplog.at_level(logging.WARNING, logger="persona_refusal.activations"):
        got_logits = _plan_logits(tiny, plan)
        got_acts = cache_activations(tiny, prompts, positions=[-2, -1], layers=[1, 2], progress=False)
    assert any(s > 2 for s in calls) and any(s <= 2 for s in calls)
    assert torch.allclose(got_logits, expected_logits, atol=ATOL)
    assert torch.allclose(got_acts, expected_acts, atol=ATOL)
    assert any("out of memory" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_out_of_memory_split_while_resuming(tiny, prompts, monkeypatch):
    texts = tiny.format(prompts + ["Hi there", "How can I improve my sleep at night?"])
    plan = plan_batches(tiny, texts)
    resid, full = _capture_resid(tiny, plan, 2)
    calls: list[int] = []
    monkeypatch.setattr(activations, "_forward", _oom_when_larger_than(1, calls))
    resumed = _plan_logits(tiny, plan, start_layer=2, start_resid=resid)
    assert set(calls) > {1}
    assert torch.allclose(resumed, full, atol=ATOL)


def test_errors_other_than_oom_propagate(tiny, prompts, monkeypatch):
    plan = plan_batches(tiny, tiny.format(prompts))

    def broken(*args, **kwargs):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(activations, "_forward", broken)
    with pytest.raises(RuntimeError, match="something else"):
        _plan_logits(tiny, plan)
    # An OOM on a single prompt cannot be split: it propagates.
    monkeypatch.setattr(activations, "_forward", _oom_when_larger_than(0, []))
    with pytest.raises(RuntimeError, match="out of memory"):
        _plan_logits(tiny, plan_batches(tiny, tiny.format(prompts), batch_size=1))


def test_abandoned_run_leaves_no_hooks(tiny, prompts, make_direction, assert_no_hooks):
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=1)
    edit = AddVector(make_direction(model=tiny, layer=1), 1.0)
    gen = run_plan(tiny, plan, interventions=[edit], logits=True, progress=False)
    next(gen)
    gen.close()
    assert_no_hooks(tiny.model)


def test_prefix_groups_one_per_system_prompt(tiny, prompts, full_forward_last_logits):
    """Prompts under different system prompts batch together, each group sharing its own
    (long) prefix, and the results still equal plain full passes."""
    systems = ["You are a pirate. Answer every question in pirate speech, with gusto and rum.",
               "You are a careful librarian who cites sources for everything and whispers."]
    texts = [t for s in systems for t in tiny.format(prompts, system=s)]
    plan = plan_batches(tiny, texts, batch_tokens=10_000)
    assert len(plan.batches) == 1
    b = plan.batches[0]
    assert b.prefix.shape[0] == 2  # one prefix row per system prompt
    assert int(b.prefix_mask.sum(1).min()) > 20  # each holds its whole system prompt
    got = pr.last_logits(tiny, plan, progress=False)
    want = full_forward_last_logits(tiny, texts)
    assert torch.allclose(got, want, atol=1e-4)


def test_multi_condition_batch_equals_separate_runs(tiny, prompts, make_direction):
    """Rows of different conditions in one batch each get exactly their own edits."""
    from persona_refusal.evaluation import generate_conditions, generate_details

    d = make_direction(tiny.d_model, layer=1, model=tiny)
    conds = [[], [pr.Ablate(d)], [pr.AddVector(d, 4.0, layer=2)]]
    many = generate_conditions(tiny, prompts, conds, max_new_tokens=6, progress=False)
    for c, ivs in enumerate(conds):
        one = generate_details(tiny, prompts, interventions=ivs, max_new_tokens=6, progress=False)
        assert many[c].texts == one.texts
        assert torch.allclose(many[c].first_scores, one.first_scores, atol=1e-4)


@pytest.mark.parametrize("pad", [0, 6])
def test_batch_budget_counts_prefix_tokens(tiny, pad):
    """The token budget bounds what a batch really runs, prefixes included: long prompts
    that share little (each its own prefix group) make more, smaller batches, so the
    memory of one forward pass does not grow with the prompts' length."""
    filler = " and please explain every step in detail" * pad
    texts = tiny.format([f"Question {i}: how do I make bread{filler}?" for i in range(24)])
    budget = 256
    plan = plan_batches(tiny, texts, batch_tokens=budget)
    for b in plan.batches:
        run = b.tokens.numel() + (b.prefix.numel() if b.n_prefix else 0)
        assert run <= budget or b.size == 1, (b.size, tuple(b.tokens.shape), tuple(b.prefix.shape))
    assert sorted(torch.cat([b.rows for b in plan.batches]).tolist()) == list(range(24))


def test_public_functions_name_every_keyword_argument():
    """help() shows each option: no ``**options`` on the caching, extraction, selection and persona functions."""
    import inspect

    from persona_refusal import persona, selection

    for fn in (pr.mean_activations, pr.cache_activations, pr.extract_directions, selection.select_refusal_direction,
               persona.persona_rollouts, persona.persona_direction):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, fn.__name__
    for fn, desc in ((pr.mean_activations, "mean activations"), (pr.cache_activations, "caching activations")):
        params = inspect.signature(fn).parameters
        assert list(params) == ["chat_model", "instructions", "positions", "layers", "system", "interventions",
                                "batch_size", "desc", "progress"]
        assert params["desc"].default == desc and params["positions"].kind is inspect.Parameter.KEYWORD_ONLY
