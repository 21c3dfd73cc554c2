"""Stage ``eval``: judged replies to every evaluation harmful prompt, without and with
persona steering."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.evaluation import Rate
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import first_token_stats, outcome_rates


@dataclass
class EvalResult(StageResult):
    baseline_refusal_rate: float
    """Judged refusal rate without steering."""
    baseline_refusal_ci: list
    """Its Wilson 95% interval."""
    persona_refusal_rate: float
    """Judged refusal rate with persona steering."""
    persona_refusal_ci: list
    """Its Wilson 95% interval."""
    baseline: dict
    """Refusal / compliance / degenerate rates and first-token statistics, no steering."""
    persona: dict
    """The same with persona steering."""
    first_token_agreement: dict
    """Share of prompts where the first-token proxy agrees with the judge, per condition."""
    examples: dict
    """The first six (instruction, reply, label) of each condition."""


@register("eval", requires=("calibrate",), order=40)
def run(ctx: StudyContext) -> EvalResult:
    """Baseline vs persona on the evaluation prompts (generation + judge)."""
    with ctx.timer("eval_generation"):
        ev = ctx.eval_harmful
        gens = ctx.judged("eval", ev, {"baseline": [], "persona": [ctx.steer()]}, "eval: baseline + persona")
    base, pers = gens["baseline"], gens["persona"]
    agreement = {}
    for name, g in (("baseline", base), ("persona", pers)):
        judged = [l == "refusal" for l in g["labels"]]
        agreement[name] = sum(a == b for a, b in zip(judged, g["refused"])) / len(judged)
    rb, rp = Rate(base["labels"].count("refusal"), len(ev)), Rate(pers["labels"].count("refusal"), len(ev))

    def examples(g):
        return [{"instruction": i, "reply": r, "label": l} for i, r, l in list(zip(ev, g["replies"], g["labels"]))[:6]]

    return EvalResult(
        baseline_refusal_rate=rb.value, baseline_refusal_ci=list(rb.ci),
        persona_refusal_rate=rp.value, persona_refusal_ci=list(rp.ci),
        baseline={**outcome_rates(base["labels"]), "first_token": first_token_stats(base["refused"], base["scores"])},
        persona={**outcome_rates(pers["labels"]), "first_token": first_token_stats(pers["refused"], pers["scores"])},
        first_token_agreement=agreement,
        examples={"baseline": examples(base), "persona": examples(pers)},
    )
