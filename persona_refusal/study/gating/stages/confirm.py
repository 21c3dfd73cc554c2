"""Stage ``confirm``: the early, late and best re-add cells of the gating sweep, confirmed
by generated, judged replies on the sweep prompts."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import first_token_stats, outcome_rates


@dataclass
class ConfirmResult(StageResult):
    gating_confirm: list
    """One record per confirmed cell: judged rates and first-token statistics."""
    sweep: dict
    """Judged rates of the sweep prompts, baseline and persona (merged into ``sweep``)."""


def cells(ctx: StudyContext, beta: float) -> dict[str, int]:
    """Early (the refusal direction's layer, if before the persona layer), late (two
    after it) and best (highest mean first-token log-odds at ``beta``) re-add layers."""
    L, P = ctx.cm.n_layers, ctx.persona_layer
    refusal_layer = ctx.result("refusal").direction.layer
    out = {"early": refusal_layer if refusal_layer < P else max(0, P - 2), "late": min(L - 1, P + 2)}
    rows = [g for g in ctx.result("gating").gating if g["beta"] == beta]
    if rows:  # the re-add layer with the highest mean refusal log-odds (continuous, never tied at 0)
        best = max(rows, key=lambda g: (g["score_mean"], -g["layer"]))["layer"]
        if best not in out.values():
            out["best"] = best
    return out


@register("confirm", requires=("gating",), order=80)
def run(ctx: StudyContext) -> ConfirmResult:
    """Chosen gating cells, judged from generated replies."""
    beta = max(ctx.betas)
    chosen = cells(ctx, beta)
    with ctx.timer("confirm"):
        conds = {f"{name}:{beta}@{l}": [ctx.steer(), ctx.readd(beta, l)] for name, l in chosen.items()}
        conds.update({"sweep_baseline": [], "sweep_persona": [ctx.steer()]})
        gens = ctx.judged("confirm", ctx.sweep_prompts, conds, "confirm chosen cells")
    confirm = []
    for name, l in chosen.items():
        g = gens[f"{name}:{beta}@{l}"]
        confirm.append({"cell": name, "layer": l, "beta": beta, **outcome_rates(g["labels"]),
                        "first_token": first_token_stats(g["refused"], g["scores"])})
    judged = {f"{name}_judged": outcome_rates(gens[f"sweep_{name}"]["labels"]) for name in ("baseline", "persona")}
    return ConfirmResult(confirm, judged)
