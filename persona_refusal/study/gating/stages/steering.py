"""Stage ``steering``: the common norm ``s`` of every strength, and the two steering
vectors (persona at the persona layer, refusal) rescaled to it."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import Direction
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, memory, register


@dataclass
class SteeringResult(StageResult):
    steering: dict
    """Persona layer, α, the norm rule, ``s``, and the unit convention."""
    persona_vector: Direction = memory()
    """The persona direction of the source layer (default: the persona layer), rescaled to norm ``s``."""
    refusal_vector: Direction = memory()
    """The refusal direction, rescaled to norm ``s``."""


@register("steering", requires=("refusal", "persona"), order=30)
def run(ctx: StudyContext) -> SteeringResult:
    """One norm for both directions, so a strength means the same for each."""
    refusal = ctx.result("refusal").direction
    source = ctx.layers["persona_source_layer"]
    p_at = ctx.result("persona").directions.at(source)
    s = {"refusal": refusal.norm, "persona": p_at.norm, "mean": 0.5 * (refusal.norm + p_at.norm)}[ctx.cfg.norm]
    record = {"persona_layer": ctx.persona_layer, "persona_source_layer": source, "persona_alpha": ctx.cfg.persona_alpha,
              "norm": ctx.cfg.norm, "s": s,
              "unit": "strengths are multiples of s; AddVector at blocks.{layer}.hook_resid_pre"}
    return SteeringResult(record, persona_vector=p_at.rescaled(s), refusal_vector=refusal.rescaled(s))
