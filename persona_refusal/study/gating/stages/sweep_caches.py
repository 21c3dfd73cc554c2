"""Stage ``sweep_caches``: the residual streams of the sweep prompts without and with
persona steering, from which every later sweep point resumes mid-model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona_refusal.activations import run_plan
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.stats import first_token_stats


@dataclass
class SweepCachesResult(StageResult):
    sweep: dict
    """The sweep prompts' first-token statistics, baseline and persona."""
    harmless_last: torch.Tensor = memory()
    """``[n_coherence, n_layers, d_model]``: harmless prompts' last-token residuals."""


@register("sweep_caches", requires=("calibrate",), order=50)
def run(ctx: StudyContext) -> SweepCachesResult:
    """Baseline and persona residual streams of the sweep prompts (kept in memory)."""
    cm, L, P = ctx.cm, ctx.cm.n_layers, ctx.persona_layer
    with ctx.timer("sweep_caches"):
        base = ctx.cache("baseline", [], range(L), desc="cache: baseline")
        pers = ctx.cache("persona", [ctx.steer()], range(P, L), desc="cache: persona")
        hplan = ctx.plan(ctx.coherence_prompts)
        harmless_last = torch.zeros(hplan.n_prompts, L, cm.d_model)
        for o in run_plan(cm, hplan, capture={cm.hook_name(l): [-1] for l in range(L)}, stop_at_layer=L, progress=False):
            for l in range(L):
                harmless_last[o.batch.rows, l] = o.captured[cm.hook_name(l)][:, 0]
    sweep = {"n": len(ctx.sweep_prompts), "baseline": first_token_stats(base.refused, base.scores),
             "persona": first_token_stats(pers.refused, pers.scores), "measure": "greedy first token is a refusal token"}
    return SweepCachesResult(sweep, harmless_last=harmless_last)
