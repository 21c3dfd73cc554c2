"""Stage ``cosines``: the cosine between the persona and the refusal direction at every
layer, against the cosines of random directions (a null band)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona_refusal import ops
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register


@dataclass
class CosinesResult(StageResult):
    cosines: dict
    """Per layer: cosine(persona, refusal); the 2.5–97.5% band of 1000 random unit vectors."""


@register("cosines", requires=("persona", "refusal"), order=130)
def run(ctx: StudyContext) -> CosinesResult:
    """How aligned are the persona and refusal directions, layer by layer?"""
    L, d = ctx.cm.n_layers, ctx.cm.d_model
    persona, refusal_layers = ctx.result("persona").directions, ctx.result("refusal").layer_directions
    refusal = ctx.result("refusal").direction
    with ctx.timer("cosines"):
        cos = [None if persona.is_zero(l) or refusal_layers.is_zero(l) else
               float(ops.cosine(persona.vectors[l].double(), refusal_layers.vectors[l].double())) for l in range(L)]
        rnd = ops.random_unit_vectors(1000, d, seed=ctx.cfg.seed + 1, dtype=torch.float64)
        null = (rnd @ refusal.unit.double()).sort().values
    return CosinesResult({"layers": list(range(L)), "cosine": cos,
                          "null": {"lo": float(null[24]), "hi": float(null[974]), "n": 1000,
                                   "note": "cosine of 1000 random unit vectors (seed+1) with a fixed direction"}})
