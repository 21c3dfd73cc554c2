"""Stage ``projections``: computed vs expressed — the sweep prompts' last-token residual
projected on each layer's own refusal direction, baseline vs persona, against harmless."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import mean_ci


@dataclass
class ProjectionsResult(StageResult):
    projections: dict
    """Per layer: mean projections with intervals, residual norms, re-add sizes."""


def unit_or_zero(v: torch.Tensor) -> torch.Tensor:
    """``v / |v|``, or zeros for a zero vector."""
    n = v.norm()
    return v / n if float(n) > 0 else torch.zeros_like(v)


def last_token(ctx: StudyContext, cache_name: str) -> torch.Tensor:
    """``[n_prompts, n_layers, d_model]``: last-token residuals of a cache, rows in prompt order."""
    L, plan, cache = ctx.cm.n_layers, ctx.sweep_plan, ctx.caches[cache_name]
    last = torch.stack([torch.cat([t[:, -1] for t in cache.resid[l]]) for l in range(L)], dim=1)
    order = torch.cat([b.rows for b in plan.batches])
    x = torch.zeros_like(last)
    x[order] = last
    return x


@register("projections", requires=("sweep_caches", "refusal"), order=120)
def run(ctx: StudyContext) -> ProjectionsResult:
    """Projection on each layer's refusal direction: is refusal computed, then not expressed?"""
    L = ctx.cm.n_layers
    refusal_layers = ctx.result("refusal").layer_directions
    s = ctx.result("steering").steering["s"]
    with ctx.timer("projections"):
        units = torch.stack([unit_or_zero(refusal_layers.vectors[l]) for l in range(L)])
        proj = {}
        for name in ("baseline", "persona"):
            x = last_token(ctx, name)
            proj[f"harmful_{name}"] = [mean_ci(x[:, l].double() @ units[l].double()) for l in range(L)]
            if name == "baseline":
                resid_norm = [float(x[:, l].norm(dim=-1).mean()) for l in range(L)]
        harmless = ctx.result("sweep_caches").harmless_last
        proj["harmless_baseline"] = [mean_ci(harmless[:, l].double() @ units[l].double()) for l in range(L)]
    return ProjectionsResult({
        "layers": list(range(L)), **proj, "direction": "each layer's diff-in-means at position -1",
        "resid_norm": resid_norm,
        "readd_relative_size": {f"{b}": [b * s / n if n > 0 else None for n in resid_norm] for b in ctx.betas}})
