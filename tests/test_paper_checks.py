"""The persona estimate from every in-character rollout (balance rules, per-prompt counts,
sampled rollouts) and the persona's refusal component split off, on hand-made tensors and
the tiny model. The stages that use them run end to end in test_paper_protocol.py."""

from __future__ import annotations

import pytest
import torch

from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import generate_details
from persona_refusal.persona import BALANCES, PersonaRollouts, Rollout, persona_direction, persona_rollouts
from persona_refusal.study.gating.stages.persona_orthogonal import orthogonal_vectors

# ============================================================================ the persona estimate
def _rollouts(balance: str, kept_systems: dict[str, list[int]], d: int = 3) -> PersonaRollouts:
    """Hand-made rollouts: activation of rollout i = a per-side, per-system-prompt constant."""
    rs, acts = [], []
    for side, systems in kept_systems.items():
        for si in systems:
            rs.append(Rollout(side, si, 0, "", "compliance" if side == "compliant" else "refusal", True, True))
            v = torch.zeros(1, d, dtype=torch.float64)
            v[0, 0] = (10.0 if side == "compliant" else -10.0) + si  # system prompt si shifts the mean
            acts.append(v)
    return PersonaRollouts(rs, torch.stack(acts), (0,), "judge", {}, balance,
                           {"compliant": 4, "refuser": 4})


def test_prompt_balance_weighs_each_system_prompt_the_same():
    # compliant: prompt 0 kept 3 times, prompt 1 once; refuser: prompt 2 once
    ro = _rollouts("prompt", {"compliant": [0, 0, 0, 1], "refuser": [2]})
    w = ro.weights("compliant")
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2], dtype=torch.float64))
    assert ro.per_prompt("compliant") == [3, 1, 0, 0] and ro.per_prompt("refuser") == [0, 0, 1, 0]
    cm = type("CM", (), {"model_id": "x", "checksum": None})()
    p = persona_direction(cm, ro)
    # compliant mean = (10 + 11) / 2 per prompt, not (3·10 + 11) / 4 per rollout
    assert float(p.vectors[0, 0]) == pytest.approx(10.5 - (-8.0))
    r = persona_direction(cm, _rollouts("rollout", {"compliant": [0, 0, 0, 1], "refuser": [2]}))
    assert float(r.vectors[0, 0]) == pytest.approx(10.25 - (-8.0))
    assert p.provenance["balance"] == "prompt" and r.provenance["balance"] == "rollout"


def test_weights_sum_to_one_for_every_balance():
    for balance in BALANCES:
        ro = _rollouts(balance, {"compliant": [0, 1, 1, 3], "refuser": [0, 2]})
        for side in ("compliant", "refuser"):
            assert float(ro.weights(side).sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("balance", BALANCES)
def test_rollouts_keep_every_in_character_one_unless_first_k(tiny, balance, monkeypatch):
    """With a judge that lets compliant rollouts of system prompts 0–5 and refuser ones of
    prompt 7 stay in character, every one is kept — except under first_k, which keeps
    only as many per side as the smaller side has, in list order."""
    from persona_refusal import persona as persona_mod

    calls = {"n": 0}

    def fake_judge(instr, replies, judge=None):
        calls["n"] += 1
        n_q = 2
        if calls["n"] == 1:  # compliant side: prompts 0..5 comply, 6..7 refuse
            return ["compliance" if i // n_q < 6 else "refusal" for i in range(len(replies))]
        return ["refusal" if i // n_q == 7 else "compliance" for i in range(len(replies))]

    monkeypatch.setattr(persona_mod, "judge_responses", fake_judge)
    ro = persona_rollouts(tiny, n_questions=2, max_new_tokens=2, balance=balance, min_per_side=1, progress=False)
    s = ro.summary()
    assert s["balance"] == balance
    if balance == "first_k":
        assert s["compliant"]["per_prompt"] == [2, 0, 0, 0, 0, 0, 0, 0]
        assert s["refuser"]["per_prompt"] == [0, 0, 0, 0, 0, 0, 0, 2]
    else:
        assert s["compliant"]["per_prompt"] == [2, 2, 2, 2, 2, 2, 0, 0]
        assert s["refuser"]["per_prompt"] == [0, 0, 0, 0, 0, 0, 0, 2]
    assert s["compliant"]["kept"] == sum(s["compliant"]["per_prompt"])


def test_unknown_balance_and_bad_samples_are_one_line_errors(tiny):
    with pytest.raises(ConfigError, match="unknown persona balance 'most'"):
        persona_rollouts(tiny, n_questions=1, balance="most", progress=False)
    with pytest.raises(ConfigError, match="samples must be a whole number"):
        persona_rollouts(tiny, n_questions=1, samples=0, progress=False)
    with pytest.raises(ConfigError, match="temperature must be"):
        persona_rollouts(tiny, n_questions=1, samples=2, temperature=0.0, progress=False)


def test_sampled_rollouts_are_seeded_and_counted(tiny):
    kw = dict(n_questions=1, max_new_tokens=6, filter="none", samples=3, temperature=1.0, progress=False)
    a, b = persona_rollouts(tiny, seed=5, **kw), persona_rollouts(tiny, seed=5, **kw)
    assert [r.reply for r in a.rollouts] == [r.reply for r in b.rollouts]
    assert len(a.rollouts) == 2 * 8 * 3 and {r.sample for r in a.rollouts} == {0, 1, 2}
    assert a.summary()["compliant"]["per_prompt"] == [3] * 8 and a.summary()["samples"] == 3
    c = persona_rollouts(tiny, seed=6, **kw)
    assert [r.reply for r in c.rollouts] != [r.reply for r in a.rollouts]


def test_sampling_is_seeded_and_temperature_zero_is_greedy(tiny):
    prompts = ["Hi", "Tell me a story"]
    greedy = generate_details(tiny, prompts, max_new_tokens=8, progress=False).texts
    assert generate_details(tiny, prompts, max_new_tokens=8, temperature=0.0, progress=False).texts == greedy
    s1 = generate_details(tiny, prompts, max_new_tokens=8, temperature=1.5, seed=1, progress=False).texts
    assert generate_details(tiny, prompts, max_new_tokens=8, temperature=1.5, seed=1, progress=False).texts == s1
    assert s1 != greedy
    with pytest.raises(ConfigError, match="temperature must be"):
        generate_details(tiny, prompts, max_new_tokens=2, temperature=-1.0, progress=False)


# ============================================================================ the orthogonal variants
@pytest.mark.parametrize("seed", range(5))
def test_orthogonal_variants_split_the_persona(seed):
    g = torch.Generator().manual_seed(seed)
    p, r1, r2 = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(3))
    v, info = orthogonal_vectors(p, {"study": r1, "injection": r2}, seed=seed)
    for tag, r in (("study", r1), ("injection", r2)):
        r_hat = r / r.norm()
        assert abs(float(v[f"minus:{tag}"] @ r_hat)) < 1e-10  # nothing left along r
        assert torch.allclose(v[f"minus:{tag}"] + v[f"only:{tag}"], p)
        assert info[tag]["share"] == pytest.approx(float((p @ r_hat) ** 2 / (p @ p)))
    # the random control removes the same share of the norm as the injection direction
    assert float(v["minus:random"].norm() ** 2) == pytest.approx(float(v["minus:injection"].norm() ** 2))
    assert abs(info["random"]["cosine"]) == pytest.approx(abs(info["injection"]["cosine"]))
