"""Stage ``grid``: the diff-in-means candidates on the train split — every post-instruction
position × every layer, one pass per prompt set."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import DirectionGrid
from persona_refusal.study.refusal.context import RefusalContext
from persona_refusal.study.refusal.stages import STUDY
from persona_refusal.study.registry import StageResult, memory, register

__all__ = ["GridResult"]


@dataclass
class GridResult(StageResult):
    grid: dict
    """Positions, layers, the norm of every candidate ``norms[position][layer]``, the train
    sizes and the file (``directions/refusal_grid``)."""
    directions: DirectionGrid = memory()
    """Every (position, layer) candidate, with the harmless mean as each one's reference."""


@register("grid", order=10, study=STUDY)
def run(ctx: RefusalContext) -> GridResult:
    """The diff-in-means candidates: every post-instruction position × every layer (train split)."""
    grid = ctx.diff_in_means_grid(ctx.prompts["train_harmful"], ctx.prompts["train_harmless"])
    norms = grid.diff.norm(dim=-1)
    record = {"positions": list(grid.positions), "layers": list(grid.layers),
              "norms": [[float(v) for v in row] for row in norms], "n_harmful": grid.n_positive,
              "n_harmless": grid.n_negative, "file": "directions/refusal_grid.json"}
    return GridResult(record, directions=grid)
