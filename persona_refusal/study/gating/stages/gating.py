"""Stage ``gating``: with persona steering on, the refusal direction re-added at every
layer (first-token refusal and restoration); the same without persona is the control."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register


@dataclass
class GatingResult(StageResult):
    gating: list
    """One record per (β, layer), persona on: refusal rate, interval, restoration."""
    gating_control: list
    """One record per (β, layer), persona off."""


@register("gating", requires=("sweep_caches",), order=70)
def run(ctx: StudyContext) -> GatingResult:
    """Refusal re-added at every layer, persona on (gating) and off (control)."""
    cfg, layers = ctx.cfg, ctx.layers
    with ctx.timer("gating"):
        pts = ctx.sweep("gating", {f"{b}@{l}": [ctx.steer(), ctx.readd(b, l)]
                                   for b in ctx.betas for l in layers["gating_layers"]}, desc="gating sweep")
        gating = [{"layer": l, "beta": b, **ctx.summarise(pts[f"{b}@{l}"])}
                  for b in ctx.betas for l in layers["gating_layers"]]
        ctl = ctx.sweep("control", {f"{b}@{l}": [ctx.readd(b, l)]
                                    for b in ctx.control_betas for l in layers["control_layers"]}, desc="control sweep")
        control = [{"layer": l, "beta": b, **ctx.summarise(ctl[f"{b}@{l}"], False)}
                   for b in ctx.control_betas for l in layers["control_layers"]]
    return GatingResult(gating, control)
