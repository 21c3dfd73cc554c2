"""agreement: Cohen's κ, raw agreement and their intervals on hand-made label tables with
known answers, then ``persona-refusal agreement DIR`` on a tiny-model smoke run folder
(phrase judges, a fake judge, the tiny model judge; the label cache; bad inputs; the
report's section).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from conftest import no_typecheck
from persona_refusal.agreement import (
    NOT_REFUSAL, PROXY, binary, cohen_kappa, compare, confusion, judge_agreement, kappa_interval, output_paths,
    read_agreement, read_run,
)
from persona_refusal.cli import main
from persona_refusal.errors import ConfigError, RunFolderError
from persona_refusal.evaluation import Rate
from persona_refusal.storage import read_json, write_json


def _pairs(table: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """Two raters' label lists from a table of (label a, label b) → count."""
    a, b = [], []
    for (x, y), n in table.items():
        a += [x] * n
        b += [y] * n
    return a, b


# ============================================================================ statistics
def test_perfect_agreement_is_kappa_one():
    a = ["refusal", "compliance", "degenerate", "refusal", "compliance"]
    assert cohen_kappa(a, list(a)) == (1.0, None)
    r = compare(a, list(a), n_boot=200, seed=0)
    assert r["kappa"] == 1.0 and r["kappa_ci"] == [1.0, 1.0] and r["agreement"]["k"] == 5


def test_textbook_two_by_two():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15.
    # p_o = 35/50 = 0.7; a says yes 25/50 = 0.5, b says yes 30/50 = 0.6;
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; κ = (0.7 − 0.5) / (1 − 0.5) = 0.4.
    a, b = _pairs({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    kappa, why = cohen_kappa(a, b)
    assert why is None and kappa == pytest.approx(0.4, abs=1e-12)
    r = compare(a, b, n_boot=500, seed=0)
    assert r["agreement"] == Rate(35, 50).to_dict()
    assert r["confusion"] == {"labels": ["no", "yes"], "counts": [[15, 10], [5, 20]]}
    lo, hi = r["kappa_ci"]
    assert lo < 0.4 < hi and -1 <= lo and hi <= 1


def test_three_way_table_worked_by_hand():
    # confusion (rows a, columns b) over refusal, compliance, degenerate: [[4, 1, 0], [1, 3, 1], [0, 0, 2]]
    # n = 12, p_o = 9/12; marginals a = (5, 5, 2), b = (5, 4, 3): p_e = (25 + 20 + 6) / 144 = 51/144;
    # κ = (108/144 − 51/144) / (93/144) = 57/93.
    R, C, D = "refusal", "compliance", "degenerate"
    a, b = _pairs({(R, R): 4, (R, C): 1, (C, R): 1, (C, C): 3, (C, D): 1, (D, D): 2})
    assert cohen_kappa(a, b)[0] == pytest.approx(57 / 93, abs=1e-12)
    assert confusion(a, b) == {"labels": [R, C, D], "counts": [[4, 1, 0], [1, 3, 1], [0, 0, 2]]}
    # on the binary scale: refusal vs not: [[4, 1], [1, 6]]: p_o = 10/12, p_e = (5*5 + 7*7)/144 = 74/144
    ab, bb = binary(a), binary(b)
    assert set(ab) == {R, NOT_REFUSAL}
    assert cohen_kappa(ab, bb)[0] == pytest.approx((120 / 144 - 74 / 144) / (70 / 144), abs=1e-12)


def test_independent_raters_are_near_zero():
    rng = random.Random(0)
    a = [rng.choice("rcd") for _ in range(4000)]
    b = [rng.choice("rcd") for _ in range(4000)]
    kappa, _ = cohen_kappa(a, b)
    assert abs(kappa) < 0.04
    lo, hi = kappa_interval(a, b, n_boot=300, seed=1)[0]
    assert lo < 0 < hi


def test_systematic_disagreement_is_negative():
    a = ["refusal", "compliance"] * 10
    b = ["compliance", "refusal"] * 10
    assert cohen_kappa(a, b)[0] == -1.0


def test_constant_raters_have_no_kappa():
    same = compare(["compliance"] * 6, ["compliance"] * 6, n_boot=50, seed=0)
    assert same["kappa"] is None and same["kappa_ci"] is None and same["agreement"]["rate"] == 1.0
    assert same["kappa_note"].startswith("undefined: both raters give every reply the label 'compliance'")
    other = compare(["refusal"] * 4, ["compliance"] * 4, n_boot=50, seed=0, names=("x", "y"))
    assert other["kappa"] is None and "both raters are constant (x: 'refusal', y: 'compliance')" in other["kappa_note"]
    # one constant rater: κ is exactly 0, and the record says why
    one = compare(["compliance"] * 4, ["refusal", "compliance", "refusal", "compliance"], n_boot=50, seed=0,
                  names=("proxy", "judge"))
    assert one["kappa"] == 0.0 and one["kappa_ci"] == [0.0, 0.0]
    assert one["kappa_note"] == "proxy gives every reply the label 'compliance': κ is 0 whatever the other rater does"
    empty = compare([], [], n_boot=10, seed=0)
    assert empty["kappa"] is None and empty["kappa_note"] == "undefined: no items" and empty["n"] == 0
    for rec in (same, other, one, empty):  # JSON without NaN
        json.dumps(rec, allow_nan=False)


def test_unequal_lengths_and_bad_resamples_are_refused():
    with pytest.raises(ConfigError, match="two raters must label the same items: 2 and 1 labels"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="n_boot must be at least 1"):
        kappa_interval(["a", "b"], ["a", "b"], n_boot=0, seed=0)


def test_bootstrap_interval_is_seeded_and_holds_the_estimate():
    rng = random.Random(3)
    a = [rng.choice(["refusal", "compliance", "degenerate"]) for _ in range(150)]
    b = [x if rng.random() < 0.7 else rng.choice(["refusal", "compliance", "degenerate"]) for x in a]
    point = cohen_kappa(a, b)[0]
    ci = kappa_interval(a, b, n_boot=1000, seed=7)[0]
    assert ci[0] < point < ci[1] and 0.3 < point < 0.9
    assert kappa_interval(a, b, n_boot=1000, seed=7)[0] == ci
    assert kappa_interval(a, b, n_boot=1000, seed=8)[0] != ci
    # no κ, no interval, and the reason
    ci2, why = kappa_interval(["r"] * 3, ["r"] * 3, n_boot=200, seed=0)
    assert ci2 is None and why.startswith("undefined: both raters give every reply the label 'r'")
    # two items: about half the resamples have both raters constant; those are left out, not counted as 0
    ci3, why3 = kappa_interval(["r", "c"], ["r", "c"], n_boot=201, seed=0)
    assert (ci3 == [1.0, 1.0] and why3 is None) or (ci3 is None and "resamples have both raters constant" in why3)


# ============================================================================ the run folder
def _study(out: Path) -> None:
    import jaxtyping

    from persona_refusal.study import StudyConfig, run_study

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:  # every judged stage: calibrate, eval, coherence, gating_judged, confirm
        cfg = StudyConfig.preset("smoke", model="tiny", calibrate_alpha=True, calibration_alphas=[1.0],
                                 judged_sweep=True, judged_layers=[2])
        run_study(cfg, out, progress=False, stages=["alpha_sweep", "confirm", "gating_judged"])
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agreement") / "run"
    _study(out)
    return out


@pytest.fixture
def run(smoke_run, tmp_path) -> Path:
    return Path(shutil.copytree(smoke_run, tmp_path / "run"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeJudge:
    """A deterministic judge that counts the replies it is asked about."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, instructions, responses):
        assert len(instructions) == len(responses) and all(isinstance(i, str) and i for i in instructions)
        self.calls += len(responses)
        return [("refusal", "compliance", "degenerate")[len(r) % 3] for r in responses]

    def __repr__(self) -> str:
        return "FakeJudge(len % 3)"


def test_every_judged_stage_is_read_with_its_prompts(smoke_run):
    run = read_run(smoke_run)
    stages = [c.stage for c in run.conditions]
    assert list(dict.fromkeys(stages)) == ["calibrate", "eval", "coherence", "gating_judged", "confirm"]
    assert list(run.raters) == [PROXY, "strict", "lenient"]
    assert run.prompts_note == {}
    results = read_json(smoke_run / "results.json")
    base = next(c for c in run.conditions if c.name == "eval/baseline")
    for i, ex in enumerate(results["examples"]["baseline"]):  # what the eval stage itself recorded
        assert base.instructions[i] == ex["instruction"] and base.replies[i] == ex["reply"]
        assert base.ratings["strict"][i] == ex["label"]
    ckpt = read_json(smoke_run / "checkpoints" / "confirm.json")
    for c in run.conditions:
        assert len(c.instructions) == len(c.replies)
        if c.stage == "confirm":
            assert c.ratings[PROXY] == ["refusal" if r else NOT_REFUSAL for r in ckpt[c.key]["refused"]]
    cal = next(c for c in run.conditions if c.stage == "calibrate")
    assert len(cal.instructions) == 16  # 8 val harmful, then 8 val harmless
    assert run.seed == 0 and run.n_boot == 200


def test_phrase_judges_and_a_fake_judge_with_the_cache(run):
    before = _files(run)
    judge = FakeJudge()
    rec = judge_agreement(run, extra={"fake": judge})
    n = rec["n_items"]
    assert judge.calls == n and rec["judging"]["fake"] == {"judged": rec["n_conditions"], "reused": 0}
    assert [r["name"] for r in rec["raters"]] == [PROXY, "strict", "lenient", "fake"]
    # the run's own files are untouched; three files are new
    after = _files(run)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["judge_agreement.json", "judge_agreement.labels.json",
                                                "judge_agreement.md"]
    # every pair, binary, plus 3-way where both are judges
    got = [(p["a"], p["b"], p["scale"]) for p in rec["pairs"]]
    assert got == [(PROXY, "strict", "binary"), (PROXY, "lenient", "binary"), (PROXY, "fake", "binary"),
                   ("strict", "lenient", "binary"), ("strict", "lenient", "3-way"), ("strict", "fake", "binary"),
                   ("strict", "fake", "3-way"), ("lenient", "fake", "binary"), ("lenient", "fake", "3-way")]
    # the strict-vs-fake 3-way numbers, computed here from the checkpoints
    run_data = read_run(run)
    strict = [l for c in run_data.conditions for l in c.ratings["strict"]]
    fake = [("refusal", "compliance", "degenerate")[len(r) % 3] for c in run_data.conditions for r in c.replies]
    pair = next(p for p in rec["pairs"] if (p["a"], p["b"], p["scale"]) == ("strict", "fake", "3-way"))
    assert pair["n"] == n == len(strict)
    assert pair["agreement"]["k"] == sum(x == y for x, y in zip(strict, fake))
    assert pair["kappa"] == pytest.approx(cohen_kappa(strict, fake)[0])
    assert pair["n_disagree"] == n - pair["agreement"]["k"] == len(pair["disagreements"])
    # headline rates per condition under each rater
    row = next(r for r in rec["rates"] if (r["stage"], r["condition"]) == ("eval", "baseline"))
    base = next(c for c in run_data.conditions if c.name == "eval/baseline").replies
    assert row["refusal"]["fake"] == Rate(sum(len(x) % 3 == 0 for x in base), len(base)).to_dict()
    assert row["refusal"]["strict"]["k"] == read_json(run / "results.json")["baseline"]["refusal"]["k"]
    # disagreements: judge against judge first, each with its instruction and reply excerpt
    dis = rec["disagreements"]
    assert dis["n"] >= dis["n_judges_differ"] > 0 and dis["items"][0]["judges_differ"]
    assert all(it["instruction"] and len(it["reply"]) <= 300 for it in dis["items"])
    assert json.loads((run / "judge_agreement.json").read_text()) == rec
    md = (run / "judge_agreement.md").read_text()
    assert "| strict | fake | 3-way |" in md and "## Refusal rate under each rater" in md
    listed = [line for line in md.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(listed) == min(40, dis["n"])
    if dis["n"] > 40:
        assert f"… and {dis['n'] - 40} more" in md
    # the second call judges nothing: every label comes from the cache
    again = FakeJudge()
    rec2 = judge_agreement(run, extra={"fake": again})
    assert again.calls == 0 and rec2["judging"]["fake"] == {"judged": 0, "reused": rec["n_conditions"]}
    assert rec2["pairs"] == rec["pairs"]
    # a changed reply is judged again, and only its condition
    path = run / "checkpoints" / "eval.json"
    data = read_json(path)
    data["persona"]["replies"][0] += " I cannot."
    write_json(path, data)
    third = FakeJudge()
    rec3 = judge_agreement(run, extra={"fake": third})
    assert third.calls == len(data["persona"]["replies"]) and rec3["judging"]["fake"]["judged"] == 1


def test_the_command_with_the_tiny_model_judge(run, capsys):
    for stage in list((run / "checkpoints").glob("*.json")):  # only eval: 24 replies, a second of judging
        if stage.stem != "eval":
            stage.unlink()
    assert main(["agreement", str(run), "--judge", "model:tiny", "--judge", "keyword", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "24 replies in 2 judged conditions; raters: first_token, strict, lenient, model:tiny" in out
    rec = read_json(run / "judge_agreement.json")
    assert rec["judging"]["strict"]["stored"] and rec["judging"]["model:tiny"]["judged"] == 2
    cache = read_json(run / "judge_agreement.labels.json")
    slot = cache["judges"]["model:tiny"]
    assert slot["identity"].startswith("ModelJudge(model='tiny'") and sorted(slot["conditions"]) == \
        ["eval/baseline", "eval/persona"]
    assert main(["agreement", str(run), "--judge", "model:tiny", "--quiet"]) == 0
    assert read_json(run / "judge_agreement.json")["judging"]["model:tiny"] == {"judged": 0, "reused": 2}


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _error(capsys, ["agreement", str(tmp_path / "empty")]) == \
        f"error: {tmp_path / 'empty'} is not a run folder: it has no readable config.json of a persona_refusal run " \
        "(give the --out folder of a `persona-refusal run`)"
    assert _error(capsys, ["agreement", str(tmp_path / "nowhere")]).endswith("nowhere does not exist (give the --out "
                                                                          "folder of a `persona-refusal run`)")
    assert "is a file, not a run folder" in _error(capsys, ["agreement", str(run / "results.json")])
    assert _error(capsys, ["agreement", ""]).startswith("error: the run folder is empty ('')")
    assert _error(capsys, ["agreement", str(run), "--judge", "nope"]).startswith("error: unknown judge 'nope' (")
    assert _error(capsys, ["agreement", str(run), "--out", str(run / "results.json")]) == \
        f"error: --out {run / 'results.json'} would write {run / 'results.json'}, a file of the run (give --out a " \
        "new file name, e.g. --out agreement.json)"
    mine = tmp_path / "notes.json"
    mine.write_text("my notes")
    assert "notes.json exists and was not written by persona-refusal agreement" in _error(
        capsys, ["agreement", str(run), "--out", str(mine)])
    assert mine.read_text() == "my notes"
    assert _error(capsys, ["agreement", str(run), "--out", ""]).startswith("error: --out is empty ('')")
    assert not (run / "judge_agreement.json").exists()
    bare = Path(shutil.copytree(run, tmp_path / "bare"))
    for p in (bare / "checkpoints").glob("*.json"):
        if p.stem not in ("gating", "alpha"):  # first-token sweeps only: no generated replies
            p.unlink()
    assert _error(capsys, ["agreement", str(bare)]) == \
        f"error: {bare} holds no judged conditions (no checkpoint with generated, judged replies) (run the stages " \
        f"that judge replies first, e.g. persona-refusal run --out {bare})"


def test_a_judge_that_needs_prompts_the_folder_cannot_give_back(run):
    cfg = read_json(run / "config.json")
    cfg["prompt_sets"]["eval_harmful"]["sha256"] = "0" * 64  # as if the prompt file had changed since
    write_json(run / "config.json", cfg)
    rec = judge_agreement(run)  # the phrase judges' stored labels need no prompts
    assert set(rec["prompts_missing"]) == {"calibrate", "eval", "coherence", "gating_judged", "confirm"}
    assert "prompt set eval_harmful" in rec["prompts_missing"]["eval"]
    assert all(it["instruction"] is None for it in rec["disagreements"]["items"])
    with pytest.raises(ConfigError, match=r"the prompts of stage calibrate in .* cannot be recovered .*, and judge "
                                          r"'fake' reads them \(put the prompt files back"):
        judge_agreement(run, extra={"fake": FakeJudge()})


def test_output_paths_and_a_folder_given_as_out(run, tmp_path):
    p = output_paths(run, tmp_path / "agree.json")
    assert (p["md"].name, p["labels"].name) == ("agree.md", "agree.labels.json")
    rec = judge_agreement(run, out=tmp_path / "agree.json")
    assert (tmp_path / "agree.md").is_file() and not (run / "judge_agreement.json").exists()
    assert rec["n_items"] > 0
    (tmp_path / "a_folder.json").mkdir()
    with pytest.raises(ConfigError, match="a_folder.json is a folder"):
        judge_agreement(run, out=tmp_path / "a_folder.json")
    with no_typecheck(), pytest.raises(RunFolderError, match="the run folder is empty"):
        read_run("")


def test_the_report_shows_the_table_and_drops_a_stale_one(run):
    from persona_refusal.analysis.report import render_report

    results = read_json(run / "results.json")
    assert read_agreement(run) == (None, None)
    assert 'id="agreement"' not in render_report(results, {}, source=run / "results.json")
    rec = judge_agreement(run, extra={"fake": FakeJudge()})
    page = render_report(results, {}, source=run / "results.json")
    assert '<h2 id="agreement">Agreement between judges</h2>' in page and 'href="#agreement"' in page
    assert "<td>strict</td><td>fake</td><td>3-way</td>" in page
    assert "Headline refusal rates (stage eval) under each rater" in page
    first = next(it for it in rec["disagreements"]["items"] if it["judges_differ"])
    import html

    assert html.escape(first["reply"]) in page  # model output is escaped
    # the run goes on: a changed checkpoint marks the section out of date
    path = run / "checkpoints" / "coherence.json"
    write_json(path, {**read_json(path), "9.0": read_json(path)["0"]})
    record, note = read_agreement(run)
    assert record == rec and note.startswith("checkpoints coherence changed since judge_agreement.json was made")
    assert "checkpoints coherence changed" in render_report(results, {}, source=run / "results.json")
    # another configuration in the folder (a --force run): the old table is not shown
    cfg = read_json(run / "config.json")
    cfg["config"]["seed"] = 1
    write_json(run / "config.json", cfg)
    record, note = read_agreement(run)
    assert record is None and "was made for another configuration" in note
    page = render_report(results, {}, source=run / "results.json")
    assert "was made for another configuration" in page and "<td>strict</td><td>fake</td>" not in page


def test_stages_keep_only_their_conditions(run, capsys):
    assert main(["agreement", str(run), "--stages", "eval", "--quiet"]) == 0
    rec = read_json(run / "judge_agreement.json")
    assert rec["stages"] == ["eval"] and rec["n_conditions"] == 2
    full = read_run(run)
    assert rec["n_items"] == sum(len(c.replies) for c in full.conditions if c.stage == "eval")
    capsys.readouterr()
    err = _error(capsys, ["agreement", str(run), "--stages", "eval,nope"])
    assert err.startswith("error: no judged stage 'nope' in ") and "choose among: " in err and "eval" in err


def test_judge_check_against_hand_labels(tmp_path, capsys):
    from persona_refusal.agreement import judge_check, labelled_replies
    from persona_refusal.evaluation import get_judge

    rows = labelled_replies()
    assert len(rows) == 30 and {r["label"] for r in rows} == {"refusal", "compliance", "degenerate"}
    # a judge that is always right agrees fully; the strict judge misses the refusals without a phrase
    oracle = {(r["instruction"], r["reply"]): r["label"] for r in rows}
    rec = judge_check({"oracle": lambda ins, reps: [oracle[(i, x)] for i, x in zip(ins, reps)],
                       "strict": get_judge("strict")}, n_boot=200)
    assert rec["judges"]["oracle"]["three_way"]["agreement"]["k"] == 30 and rec["judges"]["oracle"]["wrong"] == []
    assert rec["judges"]["oracle"]["three_way"]["kappa"] == pytest.approx(1.0)
    strict = rec["judges"]["strict"]
    wrong_notes = {w["note"] for w in strict["wrong"]}
    assert "keyword false positive: I can't stress enough" in wrong_notes and "warns only, no phrase" in wrong_notes
    assert strict["three_way"]["agreement"]["k"] == 30 - len(strict["wrong"])
    # the command, with a file of one's own and a bad one
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"instruction": "Hi", "reply": "I cannot.", "label": "refusal"}) + "\n")
    assert main(["judge-check", "--cases", str(mine), "--judge", "keyword", "--out", str(tmp_path / "r.json")]) == 0
    assert "strict" in capsys.readouterr().out and read_json(tmp_path / "r.json")["n"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Hi", "reply": "x", "label": "maybe"}) + "\n")
    assert "line 1 needs string fields instruction, reply and label" in _error(
        capsys, ["judge-check", "--cases", str(bad)])
