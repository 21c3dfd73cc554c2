"""Stage ``alpha_sweep``: dose–response of persona steering (first-token refusal on the
sweep prompts), with coherence judged on harmless prompts at every α."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import outcome_rates


@dataclass
class AlphaResult(StageResult):
    alpha_sweep: list
    """One record per α: first-token statistics and coherence rates."""
    coherence_baseline: dict
    """Coherence rates of the harmless prompts without steering."""


@register("alpha_sweep", requires=("sweep_caches",), order=60)
def run(ctx: StudyContext) -> AlphaResult:
    """Persona strength α against refusal and coherence."""
    alphas = ctx.cfg.alphas
    with ctx.timer("alpha_sweep"):
        coh = ctx.judged("coherence", ctx.coherence_prompts, {"0": [], **{f"{a}": [ctx.steer(a)] for a in alphas}},
                         "coherence (all α)")
        points = ctx.sweep("alpha", {f"{a}": [ctx.steer(a)] for a in alphas})
    rows = [{"alpha": a, **ctx.summarise(points[f"{a}"], False), "coherence": outcome_rates(coh[f"{a}"]["labels"])}
            for a in alphas]
    return AlphaResult(rows, outcome_rates(coh["0"]["labels"]))
