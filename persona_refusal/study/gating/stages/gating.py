"""Stage ``gating``: with persona steering on, the refusal direction re-added at every
layer (first-token refusal and restoration); the same without persona is the control.
The loop and the arithmetic are :func:`~persona_refusal.study.gating.readd.readd_sweep`'s,
shared with :func:`persona_refusal.gating_experiment`; the stage measures each point with
:meth:`StudyContext.sweep` (checkpointed, started mid-model)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.gating.readd import readd_sweep
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
    layers = ctx.layers
    with ctx.timer("gating"):
        gating = readd_sweep(lambda pts: ctx.sweep("gating", pts, desc="gating sweep"), [ctx.steer()], ctx.readd,
                             ctx.betas, layers["gating_layers"], reference=ctx.reference, **ctx.boot)
        control = readd_sweep(lambda pts: ctx.sweep("control", pts, desc="control sweep"), [], ctx.readd,
                              ctx.control_betas, layers["control_layers"], reference=None, **ctx.boot)
    return GatingResult(gating, control)
