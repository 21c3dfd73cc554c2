"""Stage ``heatmap``: persona layer × re-add layer, first-token refusal on the sweep
prompts (points shared with the gating sweep are read from it, not recomputed)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import first_token_stats


@dataclass
class HeatmapResult(StageResult):
    heatmap: dict
    """Persona layers, re-add layers, β, refusal rate and mean log-odds grids, persona alone."""


@register("heatmap", requires=("gating",), order=90)
def run(ctx: StudyContext) -> HeatmapResult:
    """Where the persona is added × where refusal is re-added."""
    st, P = ctx.store, ctx.persona_layer
    hp, hr = ctx.layers["heatmap_persona_layers"], ctx.layers["heatmap_refusal_layers"]
    beta = max(ctx.betas)
    rate = [[None] * len(hr) for _ in hp]
    score = [[None] * len(hr) for _ in hp]
    with ctx.timer("heatmap"):
        for i, pl in enumerate(hp):
            shared = {l: f"{beta}@{l}" for l in hr if pl == P and st.has("gating", f"{beta}@{l}")}
            todo = [l for l in hr if not st.has("heatmap", f"{pl}x{l}") and l not in shared]
            if any(l > pl for l in todo):
                ctx.cache(f"persona@{pl}", [ctx.steer(layer=pl)], [l for l in hr if l > pl],
                          desc=f"cache: persona at {pl}")
            pts = ctx.sweep("heatmap", {f"{pl}x{l}": [ctx.steer(layer=pl), ctx.readd(beta, l)]
                                        for l in hr if l not in shared})
            for j, l in enumerate(hr):
                pt = st.get("gating", shared[l]) if l in shared else pts[f"{pl}x{l}"]
                sm = first_token_stats(pt["refused"], pt["scores"])
                rate[i][j], score[i][j] = sm["refusal_rate"], sm["score_mean"]
            ctx.drop_cache(f"persona@{pl}")
        persona_only = []
        for pl in hp:
            if pl == P:  # persona alone at the main layer: the sweep's persona run
                p = ctx.caches["persona"]
                persona_only.append(first_token_stats(p.refused, p.scores))
                continue
            pt = ctx.sweep("heatmap", {f"{pl}xnone": [ctx.steer(layer=pl)]})[f"{pl}xnone"]
            persona_only.append(first_token_stats(pt["refused"], pt["scores"]))
    return HeatmapResult({"persona_layers": hp, "refusal_layers": hr, "beta": beta, "refusal_rate": rate,
                          "score_mean": score, "persona_only": persona_only})
