"""Stage ``patching``: the unsteered run's residual stream patched into the persona run,
per layer (all post-instruction positions) and per single position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona_refusal.interventions import Patch
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register


@dataclass
class PatchingResult(StageResult):
    patching: list
    """One record per (layer, positions): first-token statistics and restoration."""


def baseline_source(ctx: StudyContext, layer: int, positions) -> torch.Tensor:
    """``[n_prompts, len(positions), d_model]``: the baseline residual at ``layer``, rows in prompt order."""
    plan, cache = ctx.sweep_plan, ctx.caches["baseline"]
    src = torch.zeros(plan.n_prompts, len(positions), ctx.cm.d_model)
    for k, batch in enumerate(plan.batches):
        src[batch.rows] = cache.resid[layer][k][:, list(positions)]
    return src


@register("patching", requires=("sweep_caches",), order=110)
def run(ctx: StudyContext) -> PatchingResult:
    """Activation patching, default run → persona run."""
    cm, post = ctx.cm, ctx.cm.post_instruction_positions
    specs = [(l, tuple(post)) for l in ctx.layers["patch_layers"]]
    specs += [(l, (p,)) for l in ctx.layers["patch_position_layers"] for p in post]
    key = {spec: f"{spec[0]}:{','.join(map(str, spec[1]))}" for spec in specs}
    out = []
    with ctx.timer("patching"):
        for spec in specs:  # one point at a time: each Patch holds its source tensor
            l, pos = spec
            pt = ctx.store.point("patching", key[spec], lambda l=l, pos=pos: ctx.score(
                [ctx.steer(), Patch(cm.hook_name(l), baseline_source(ctx, l, pos), list(pos))]))
            out.append({"layer": l, "positions": list(pos), **ctx.summarise(pt)})
    return PatchingResult(out)
