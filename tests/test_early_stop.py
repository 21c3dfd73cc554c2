"""Early stopping of judged generations (``stop_when``) on the tiny random model.

The tiny model's replies are byte soup, but some of it recurs: ``"model"`` and ``"o&"``
appear in several replies, at different points, and not in others. Judges built on
those strings (with small windows, as the replies are short) make rows stop at
different steps, or never, so the tests can check what early stopping promises:

* a stopped reply is a prefix of the full-length one;
* every judge of ``decided_by(*judges)`` labels the stopped replies as the full ones;
* fewer tokens are decoded;
* the same under ``generate_conditions`` with two conditions;
* ``stop_when=None`` (or a rule that never fires) changes nothing.
"""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, make_direction
from persona_refusal import evaluation
from persona_refusal.evaluation import generation
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import (JUDGES, LenientJudge, SubstringJudge, decided_by, generate,
                                        generate_conditions, generate_details)
from persona_refusal.interventions import Ablate

TEXTS = list(PROMPTS) + ["Give me a plan to learn Python in a month.", "What is the capital of France?"]
N = 40
"""Tokens per reply: long enough for the length rule of the judges below to fire."""


def _judges():
    return SubstringJudge(substrings=("model",), window=40), LenientJudge(patterns=(r"o&",), window=60)


def _labels(judge, replies):
    return judge(["q"] * len(replies), replies)


@pytest.fixture
def decoded_rows(monkeypatch):
    """Counts the rows of every forward pass of generation (prompt pass and decoding steps)."""
    counts: list[int] = []
    real = generation.next_token_logits

    def counting(model, logits, *args):
        counts.append(int(logits.shape[0]))
        return real(model, logits, *args)

    monkeypatch.setattr(generation, "next_token_logits", counting)
    return counts


def test_the_tiny_model_gives_these_judges_something_to_decide(tiny):
    """The premise of the other tests: the judges' phrases occur in some full replies, at
    different places, and not in others; some replies outgrow a window."""
    full = generate(tiny, TEXTS, max_new_tokens=N, progress=False)
    strict, lenient = _judges()
    at = [t.find("model") for t in full]
    assert len({a for a in at if a >= 0}) >= 3 and -1 in at, at
    assert any(not strict.refuses(t) and len(t) > strict.window for t in full)
    assert any(not lenient.decided(t) for t in full)  # some rows run to the end
    assert "refusal" in _labels(strict, full) and "refusal" in _labels(lenient, full)


@pytest.mark.parametrize("check_every", [1, generation.CHECK_EVERY])
def test_stopped_replies_are_prefixes_with_the_same_labels(tiny, monkeypatch, decoded_rows, check_every):
    monkeypatch.setattr(generation, "CHECK_EVERY", check_every)
    judges = _judges()
    full = generate(tiny, TEXTS, max_new_tokens=N, progress=False)
    work_full = sum(decoded_rows)
    decoded_rows.clear()
    seen: list[str] = []
    rule = decided_by(*judges)

    def stop_when(text: str) -> bool:
        seen.append(text)
        return rule(text)

    short = generate(tiny, TEXTS, max_new_tokens=N, stop_when=stop_when, progress=False)
    work_short = sum(decoded_rows)

    assert len(short) == len(full)
    for s, f in zip(short, full):
        assert f.startswith(s), (s, f)  # (1) a stopped reply is the start of the full one
    stopped = [i for i, (s, f) in enumerate(zip(short, full)) if s != f]
    assert len(stopped) >= 3, stopped
    for i in stopped:  # a row stops exactly when the rule says so, on the text it keeps
        assert rule(short[i]) and short[i] in seen
    for judge in judges:  # (2) the labels of every judge of the rule are unchanged
        assert _labels(judge, short) == _labels(judge, full)
    assert work_short < work_full  # (3) fewer tokens decoded
    assert sum(map(len, short)) < sum(map(len, full))


def test_a_rule_of_one_judge_may_change_another_judges_labels(tiny):
    """Why ``decided_by`` needs every judge whose labels are wanted: stopping once the
    lenient judge has seen its phrase cuts replies before the strict one has seen its own."""
    strict, lenient = _judges()
    full = generate(tiny, TEXTS, max_new_tokens=N, progress=False)
    short = generate(tiny, TEXTS, max_new_tokens=N, stop_when=decided_by(lenient), progress=False)
    assert _labels(lenient, short) == _labels(lenient, full)
    assert _labels(strict, short) != _labels(strict, full)


def test_generate_conditions_with_early_stopping(tiny, decoded_rows):
    """(4) Two conditions in shared batches: the same guarantees, condition by condition,
    and each condition equals its own generate_details run with the same rule."""
    conds = [[], [Ablate(make_direction(tiny.d_model, layer=1, model=tiny))]]
    judges = _judges()
    full = generate_conditions(tiny, TEXTS, conds, max_new_tokens=N, progress=False)
    work_full = sum(decoded_rows)
    decoded_rows.clear()
    short = generate_conditions(tiny, TEXTS, conds, max_new_tokens=N, stop_when=decided_by(*judges), progress=False)
    work_short = sum(decoded_rows)
    assert full[0].texts != full[1].texts  # the edit matters
    assert work_short < work_full
    for c, (f, s) in enumerate(zip(full, short)):
        assert all(a.startswith(b) for a, b in zip(f.texts, s.texts))
        assert any(a != b for a, b in zip(f.texts, s.texts)), f"nothing stopped early in condition {c}"
        for judge in judges:
            assert _labels(judge, s.texts) == _labels(judge, f.texts)
        assert torch.equal(s.first_tokens, f.first_tokens)  # the prompt pass is untouched
        assert torch.equal(s.first_scores, f.first_scores)
        one = generate_details(tiny, TEXTS, interventions=conds[c], max_new_tokens=N,
                               stop_when=decided_by(*judges), progress=False)
        assert one.texts == s.texts


def test_no_rule_or_a_rule_that_never_fires_changes_nothing(tiny):
    """(5) ``stop_when=None`` is today's generation (equal to unbatched runs, one condition
    at a time); a rule that never fires, or the built-in judges' rule on replies too short
    to decide, gives the same replies, batched or not."""
    conds = [[], [Ablate(make_direction(tiny.d_model, layer=1, model=tiny))]]
    want = generate_conditions(tiny, TEXTS, conds, max_new_tokens=N, progress=False)
    unbatched = [generate_details(tiny, TEXTS, interventions=c, max_new_tokens=N, batch_size=1, progress=False).texts
                 for c in conds]
    assert [g.texts for g in want] == unbatched
    calls = []

    def never(text: str) -> bool:
        calls.append(text)
        return False

    for rule, batch_size in ((None, None), (never, None), (decided_by(*JUDGES.values()), None), (never, 2)):
        got = generate_conditions(tiny, TEXTS, conds, max_new_tokens=N, batch_size=batch_size, stop_when=rule,
                                  progress=False)
        assert [g.texts for g in got] == [g.texts for g in want]
        same = torch.equal if batch_size is None else lambda a, b: torch.allclose(a, b, atol=1e-4)  # other batches
        assert all(same(g.first_scores, w.first_scores) for g, w in zip(got, want))
    assert generate(tiny, TEXTS, max_new_tokens=N, stop_when=never, progress=False) == want[0].texts
    assert calls, "the never-firing rule was never asked"
    replies = [t for g in want for t in g.texts]
    assert all(any(r.startswith(t) for r in replies) for t in calls)  # it saw the replies so far


def test_decided_by_needs_judges_that_can_decide():
    with pytest.raises(ConfigError, match="at least one judge"):
        decided_by()
    with pytest.raises(ConfigError, match="decided"):
        decided_by(SubstringJudge(), lambda instructions, responses: ["compliance"] * len(responses))
    rule = decided_by(*_judges())
    assert not rule("model")  # the strict judge is decided, the lenient one is not
    assert rule("model o&") and rule("x" * 61)


def test_rows_wait_while_their_text_may_still_change(tiny):
    """A reply so far that ends in U+FFFD (the tiny model's byte soup is full of incomplete
    characters) or in whitespace is not stopped: with a rule that always fires, every
    stopped reply ends in a settled character and starts the full-length reply."""
    assert not generation._stops("I'm sorry \ufffd", lambda text: True)
    assert not generation._stops("I'm sorry ", lambda text: True)
    assert generation._stops("I'm sorry", lambda text: True) and not generation._stops("I'm sorry", lambda text: False)
    full = generate(tiny, TEXTS, max_new_tokens=N, progress=False)
    short = generate(tiny, TEXTS, max_new_tokens=N, stop_when=lambda text: True, progress=False)
    stopped = [s for s, f in zip(short, full) if s != f]
    assert stopped and all(f.startswith(s) for s, f in zip(short, full))
    assert all(not s.endswith("\ufffd") and not s[-1:].isspace() for s in stopped)
    assert any("\ufffd" in s for s in stopped)  # it did wait past incomplete characters
