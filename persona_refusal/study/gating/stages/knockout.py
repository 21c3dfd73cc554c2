"""Stage ``knockout``: with persona steering on, the persona direction ablated over
windows of layers, against random directions (which windows carry the persona?)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal import ops
from persona_refusal.directions import LayerDirections
from persona_refusal.interventions import Ablate
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register


@dataclass
class KnockoutResult(StageResult):
    knockout: list
    """One record per (direction kind, window): first-token statistics and restoration."""


@register("knockout", requires=("sweep_caches", "persona"), order=100)
def run(ctx: StudyContext) -> KnockoutResult:
    """Persona knockout over windows of layers, with a random-direction control."""
    cm, cfg = ctx.cm, ctx.cfg
    L, w = cm.n_layers, ctx.layers["knockout_window"]
    rand = LayerDirections(vectors=ops.random_unit_vectors(L, cm.d_model, seed=cfg.seed), layers=tuple(range(L)),
                           name="random", model_id=cm.model_id, model_checksum=cm.checksum)
    dirs = {"persona": ctx.result("persona").directions, "random": rand}
    windows = [(kind, a) for kind in dirs for a in ctx.layers["knockout_starts"]]
    with ctx.timer("knockout"):
        pts = ctx.sweep("knockout", {
            f"{kind}:{a}-{a + w}": [ctx.steer(), Ablate(dirs[kind], layers=list(range(a, a + w)), sites=("resid_pre",),
                                                        allow_transfer=cfg.allow_transfer)]
            for kind, a in windows})
    return KnockoutResult([{"direction": kind, "start": a, "end": a + w, **ctx.summarise(pts[f"{kind}:{a}-{a + w}"])}
                           for kind, a in windows])
