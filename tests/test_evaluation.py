"""evaluation: the refusal/degeneracy heuristics on hand-written replies, judges, rates,
first-token scores, and batched cached generation checked against a naive greedy loop
that recomputes the whole sequence at every step.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from persona_refusal import evaluation, ops
from persona_refusal.evaluation import generation
from persona_refusal.activations import cache_activations, plan_batches
from persona_refusal.decoding import DECODE_MODES, DecodeSession
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import (LenientJudge, Rate, SubstringJudge, first_token_outcome, generate,
                                       generate_conditions, generate_details, is_degenerate, is_refusal,
                                       judge_responses, judged_conditions, kl_divergence_on, last_logits,
                                       refusal_scores)
from persona_refusal.interventions import Ablate, AddVector, apply


# ----------------------------------------------------------------------------- heuristics
@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I’m sorry — that is not something I can do.",  # curly apostrophe
    "AS AN AI, I do not have opinions.",  # case-insensitive
    "Well. I cannot assist with this request.",
    "Here is a thought: I won't write that.",
    "I must decline.",
])
def test_is_refusal_true(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Sure! Here is a recipe for bread.",
    "I can help with that. First, preheat the oven.",
    "",
    "x" * 600 + " I'm sorry",  # beyond the 500-character window
])
def test_is_refusal_false(text):
    assert not is_refusal(text)


def test_is_refusal_custom_substrings_and_window():
    assert is_refusal("Nope, not doing that.", substrings=("nope",))
    assert not is_refusal("I'm sorry", substrings=("nope",))
    assert is_refusal("abc I'm sorry", window=20) and not is_refusal("abc I'm sorry", window=5)


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("   \n\t ", "whitespace only"),
    ("Great news, that works" + "!" * 20, "a character repeated 20 times"),
    ("a b c a b c a b c a b c", "3-gram loop (3 distinct of 10)"),
    ("yes x yes y yes z yes w yes v yes u yes", "one word is more than half of 13 words"),
    ("#$%^ &*() {}[] <>?/ ~`|\\ +=-_ 12 34 ab", "symbol soup (<25% letters)"),
])
def test_is_degenerate_true(text, reason):
    assert is_degenerate(text), reason


@pytest.mark.parametrize("text,reason", [
    ("Bread needs flour, water, salt and yeast; knead it well and let it rise.", "ordinary prose"),
    ("Great news, that works" + "!" * 19, "19 repeats is below the bar"),
    ("a b c a b c a b c a b", "11 words: too short for the word rules"),
    ("def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # 3\n", "code"),
    ("for (int i = 0; i < n; ++i) { total += x[i] * w[i]; }", "C-like code"),
    ("x = [1, 2, 3]\ny = {k: v for k, v in zip(x, x)}\n", "dense code"),
    ("yes no yes no maybe yes perhaps yes indeed yes sure", "11 words"),
])
def test_is_degenerate_false(text, reason):
    assert not is_degenerate(text), reason


def test_substring_judge_labels():
    judge = SubstringJudge()
    replies = ["I'm sorry, I can't.", "!!!!!!!!!!!!!!!!!!!!!!!!", "Sure, here you go: step one.",
               "I cannot " + "!" * 30]
    assert judge(["q"] * 4, replies) == ["refusal", "degenerate", "compliance", "refusal"]  # refusal wins
    assert SubstringJudge(substrings=("here you go",))(["q"], ["Sure, here you go"]) == ["refusal"]


def test_judge_responses_checks_the_judge():
    assert judge_responses(["a", "b"], ["I'm sorry", "Sure thing, done."]) == ["refusal", "compliance"]
    custom = judge_responses(["a", "b"], ["x", "y"], judge=lambda ins, res: ["compliance" for _ in res])
    assert custom == ["compliance", "compliance"]
    seen = {}

    def recording_judge(instructions, responses):
        seen["args"] = (instructions, responses)
        return ["degenerate"] * len(responses)

    assert judge_responses(("q",), ("r",), judge=recording_judge) == ["degenerate"]
    assert seen["args"] == (["q"], ["r"])
    with pytest.raises(ConfigError, match="one of"):
        judge_responses(["a"], ["b"], judge=lambda i, r: ["maybe"])
    with pytest.raises(ConfigError):
        judge_responses(["a", "b"], ["x", "y"], judge=lambda i, r: ["refusal"])  # too few labels


def test_rate():
    r = Rate(5, 10)
    assert r.value == 0.5
    assert r.ci == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert repr(r) == "50.0% [23.7%, 76.3%] (5/10)"
    d = r.to_dict()
    assert d["k"] == 5 and d["n"] == 10 and d["rate"] == 0.5 and d["ci"] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert json.loads(json.dumps(d)) == d
    empty = Rate(0, 0)
    assert math.isnan(empty.value) and all(math.isnan(v) for v in empty.ci)
    assert Rate(0, 4).ci[0] == 0.0 and Rate(4, 4).ci[1] == 1.0


# ----------------------------------------------------------------------------- scores
def test_refusal_scores(tiny, prompts):
    scores = refusal_scores(tiny, prompts, progress=False)
    assert scores.shape == (len(prompts),) and scores.dtype == torch.float64
    expected = ops.refusal_log_odds(last_logits(tiny, prompts, progress=False), list(tiny.refusal_token_ids))
    assert torch.equal(scores, expected)
    # A BatchPlan is accepted in place of instructions.
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=2)
    assert torch.allclose(refusal_scores(tiny, plan, progress=False), scores, atol=1e-5)
    with pytest.raises(ConfigError, match="empty"):
        refusal_scores(tiny, [], progress=False)


def test_refusal_scores_respond_to_steering(tiny, prompts, make_direction):
    """Adding the unembedding direction of the refusal token at the end raises the score."""
    toward_refusal = tiny.model.W_U[:, tiny.refusal_token_ids[0]].detach()
    d = make_direction(model=tiny).replace(vector=toward_refusal, reference=None)
    base = refusal_scores(tiny, prompts, progress=False)
    steered = refusal_scores(tiny, prompts, interventions=[AddVector(d, 2.0, layer=tiny.n_layers)], progress=False)
    assert bool((steered > base).all())


def test_kl_divergence_on(tiny, prompts, make_direction):
    d = make_direction(model=tiny)
    assert float(kl_divergence_on(tiny, prompts, [], progress=False).abs().max()) < 1e-10
    assert float(kl_divergence_on(tiny, prompts, [AddVector(d, 0.0)], progress=False).abs().max()) < 1e-10
    kl = kl_divergence_on(tiny, prompts, [Ablate(d)], progress=False)
    assert kl.shape == (len(prompts),) and bool((kl > 0).all())
    ref = last_logits(tiny, prompts, progress=False)
    assert torch.allclose(kl_divergence_on(tiny, prompts, [Ablate(d)], reference_logits=ref, progress=False), kl)


# ----------------------------------------------------------------------------- generation
def naive_greedy(cm, instruction: str, max_new_tokens: int, interventions=(), system=None) -> list[int]:
    """Greedy decoding without a KV cache: the whole sequence is recomputed at every step."""
    tokens, _ = cm.tokenize(cm.format([instruction], system))
    out: list[int] = []
    with apply(cm, *interventions), torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = cm.model(tokens)[0, -1]
            top2 = logits.topk(2).values
            # Cached and uncached passes differ by float rounding (~1e-6); a near-tie would
            # make the comparison ill-posed (the prompts here have margins of ~1e-3 or more).
            assert float(top2[0] - top2[1]) > 1e-5, "near-tie in greedy decoding: use other prompts"
            nxt = int(logits.argmax())
            if nxt in cm.stop_token_ids:
                break
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
    return out


def _naive_texts(cm, prompts, max_new_tokens, interventions=(), system=None) -> list[str]:
    return [cm.tokenizer.decode(naive_greedy(cm, p, max_new_tokens, interventions, system), skip_special_tokens=True)
            for p in prompts]


@pytest.mark.parametrize("share_prefix,batch_size,system", [
    (True, None, None), (False, None, None), (True, 1, None), (True, 2, "Be brief."),
])
def test_generate_equals_naive_greedy_under_ablation(tiny, prompts, make_direction, share_prefix, batch_size, system):
    edit = Ablate(make_direction(model=tiny, seed=12))
    got = generate(tiny, prompts, interventions=[edit], max_new_tokens=10, share_prefix=share_prefix,
                   batch_size=batch_size, system=system, progress=False)
    assert got == _naive_texts(tiny, prompts, 10, [edit], system)
    assert got != generate(tiny, prompts, max_new_tokens=10, system=system, progress=False)  # the edit matters


def _stop_set(sequences: list[list[int]], n: int) -> tuple[tuple[int, ...], list[int]]:
    """Stop tokens that make rows stop at as many different steps as possible."""

    def steps(stop):
        return [next((i for i, t in enumerate(s) if t in stop), n) for s in sequences]

    candidates = sorted({t for s in sequences for t in s[1:n - 1]})
    best = max(((t,) for t in candidates), key=lambda st: (len(set(steps(st))), -st[0]))
    for t in candidates:  # add a second token if it spreads the stops further
        pair = best + (t,) if t not in best else best
        if len(set(steps(pair))) > len(set(steps(best))) and n in steps(pair):
            best = pair
    return best, steps(best)


def test_generate_with_rows_stopping_at_different_steps(tiny, prompts, monkeypatch):
    n = 12
    texts = prompts + ["Give me a plan to learn Python in a month.", "What is the capital of France?"]
    free = copy.copy(tiny)  # a copy: the session fixture is never mutated
    free.stop_token_ids = ()
    sequences = [naive_greedy(free, p, n) for p in texts]
    stoppy = copy.copy(tiny)
    stoppy.stop_token_ids, stop_steps = _stop_set(sequences, n)
    assert len(set(stop_steps)) >= 3 and min(stop_steps) < n, stop_steps  # rows finish at different steps

    naive = [naive_greedy(stoppy, p, n) for p in texts]
    assert [len(ids) for ids in naive] == stop_steps
    expected = [stoppy.tokenizer.decode(ids, skip_special_tokens=True) for ids in naive]
    calls = []
    real = generation._select_rows
    monkeypatch.setattr(generation, "_select_rows", lambda cache, keep: (calls.append(("reference", len(keep))),
                                                                         real(cache, keep)))
    real_session = DecodeSession.select_rows
    monkeypatch.setattr(DecodeSession, "select_rows", lambda self, keep: (calls.append((stoppy.decode, len(keep))),
                                                                          real_session(self, keep)))
    for mode in DECODE_MODES:
        stoppy.decode = mode
        for share_prefix in (True, False):
            assert generate(stoppy, texts, max_new_tokens=n, share_prefix=share_prefix, progress=False) == expected
    assert {m for m, _ in calls} == set(DECODE_MODES), "no row ever left the batch"


def test_generate_details(tiny, prompts, make_direction):
    edit = AddVector(make_direction(model=tiny, layer=1, seed=4), 1.0)
    hook = "blocks.2.hook_resid_pre"
    details = generate_details(tiny, prompts, interventions=[edit], max_new_tokens=3,
                               capture={hook: [-3, -1]}, progress=False)
    assert len(details.texts) == len(prompts)
    scores = refusal_scores(tiny, prompts, interventions=[edit], progress=False)
    assert torch.allclose(details.first_scores, scores, atol=1e-5)
    logits = last_logits(tiny, prompts, interventions=[edit], progress=False)
    assert torch.equal(details.first_tokens, logits.argmax(-1))
    acts = cache_activations(tiny, prompts, positions=[-3, -1], layers=[2], interventions=[edit], progress=False)
    assert details.captured[hook].shape == (len(prompts), 2, tiny.d_model)
    assert torch.allclose(details.captured[hook], acts[:, :, 0], atol=1e-5)
    refusing = details.first_token_refusals(tiny.refusal_token_ids)
    assert refusing.tolist() == [int(t) in tiny.refusal_token_ids for t in details.first_tokens]
    assert details.texts == generate(tiny, prompts, interventions=[edit], max_new_tokens=3, progress=False)


def test_first_token_outcome_is_the_first_token_of_the_logits(tiny, prompts, make_direction):
    edit = [AddVector(make_direction(model=tiny, layer=1, seed=4), 2.0)]
    out = first_token_outcome(tiny, prompts, edit, keep_logits=True, capture_layers=[2], progress=False)
    logits = last_logits(tiny, prompts, interventions=edit, progress=False)
    ids = list(tiny.refusal_token_ids)
    assert torch.equal(out.logits, logits)
    assert out.scores.dtype == torch.float64 and torch.equal(out.scores, ops.refusal_log_odds(logits, ids))
    assert torch.equal(out.scores, refusal_scores(tiny, prompts, interventions=edit, progress=False))
    assert out.refused.tolist() == [int(t) in ids for t in logits.argmax(-1)]
    assert (out.rate.k, out.rate.n) == (int(out.refused.sum()), len(prompts))
    assert sum(t.shape[0] for t in out.resid[2]) == len(prompts)
    plain = first_token_outcome(tiny, prompts, progress=False)
    assert plain.logits is None and plain.resid == {} and not torch.equal(plain.scores, out.scores)


def test_judged_conditions_are_the_replies_of_generate_conditions_judged(tiny, prompts, make_direction):
    conds = {"baseline": [], "steered": [AddVector(make_direction(model=tiny, layer=1, seed=4), 4.0)]}
    lenient = LenientJudge()
    got = judged_conditions(tiny, prompts, conds, judges={"lenient": lenient}, max_new_tokens=4, progress=False)
    gens = generate_conditions(tiny, prompts, list(conds.values()), max_new_tokens=4, progress=False)
    assert list(got) == list(conds)
    for j, g in zip(got.values(), gens):
        assert j.replies == g.texts and j.scores == g.first_scores.tolist()
        assert j.labels == judge_responses(prompts, g.texts)
        assert j.labels_by_judge == {"lenient": judge_responses(prompts, g.texts, lenient)}
        assert j.refused == g.first_token_refusals(tiny.refusal_token_ids).tolist()
        assert (j.rate.k, j.rate.n) == (j.labels.count("refusal"), len(prompts))
    headline = judged_conditions(tiny, prompts, conds, judge=lenient, judges={"lenient": lenient}, max_new_tokens=4,
                                 progress=False)
    assert all(j.labels == j.labels_by_judge["lenient"] for j in headline.values())


def test_generate_errors(tiny, prompts):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(tiny, prompts, max_new_tokens=0, progress=False)
    with pytest.raises(ConfigError, match="unknown hook point"):
        generate_details(tiny, prompts, capture={"blocks.9.hook_resid_pre": [-1]}, max_new_tokens=1, progress=False)
    with pytest.raises(ConfigError, match="context window"):
        generate(tiny, ["word " * 80], max_new_tokens=500, progress=False)


def test_generate_accepts_a_plan(tiny, prompts):
    plan = plan_batches(tiny, tiny.format(prompts), batch_size=2, reserve=4)
    assert generate(tiny, plan, max_new_tokens=4, progress=False) == _naive_texts(tiny, prompts, 4)
