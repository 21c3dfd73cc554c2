"""Stage ``gating_judged``: the gating sweep judged from generated long replies, as the
paper measures it.

With persona steering on, the refusal direction is re-added at every layer of
``judged_layers`` (at the first re-add strength β₀) and in each named cell of
``readd_cells`` (a cell is a set of layers re-added together, e.g. the paper's paired
late cell 22 + 24) at every β; the cells are also run without persona steering (the
control). Each condition generates ``max_new_tokens`` tokens for every evaluation
prompt, and every built-in judge labels the replies (``strict``: Arditi et al.'s phrases;
``lenient``: the paper's broader phrases anywhere in the first 500 characters). The
baseline and persona conditions are the ``eval`` stage's own replies (same prompts, same
length). Rates carry Wilson intervals; restoration of the persona → baseline gap carries
a paired bootstrap interval over prompts; the first token of each reply gives the fast
proxy, and the stage reports how often proxy and judge agree and where the judges differ.

With ``control_harmless``, the same re-adds run without the persona on harmless
evaluation prompts (every cell at every β, every judged layer at β₀, and the unedited
model): ``control_harmless`` records each one's refusal and degenerate rates (Wilson) and
the refusal it induces over the unedited model (paired bootstrap). The paper's late cells
restore refusal only if the re-added direction can cause refusal at all there; on harmful
prompts, where the unsteered model already refuses, that is not visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.gating.readd import _refused, agreement, judged_points, judged_rows, judged_stats
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import paired_difference

__all__ = ["GatingJudgedResult", "judged_stats", "harmless_conditions", "induced_stats"]

GROUP_ROWS = 256
"""About this many (condition, prompt) rows are generated, then checkpointed, at a time."""


@dataclass
class GatingJudgedResult(StageResult):
    gating_judged: dict | None
    """Per layer, per cell and per control cell: each judge's refusal rate (Wilson) and
    restoration (paired bootstrap), the first-token proxy and its agreement; the judges'
    disagreements. ``None`` when ``judged_sweep`` is off."""


def _disagreements(key: str, g: dict, prompts: Sequence[str], judges: Sequence[str]) -> dict | None:
    if len(judges) < 2:
        return None
    a, b = judges[0], judges[1]
    ra, rb = _refused(g, a), _refused(g, b)
    differ = [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
    if not differ:
        return None
    return {"condition": key, f"{a}_k": sum(ra), f"{b}_k": sum(rb), "n": len(ra), "n_differ": len(differ),
            "examples": [{"prompt": prompts[i], "reply": g["replies"][i][:300],
                          a: g["labels_by_judge"][a][i], b: g["labels_by_judge"][b][i]} for i in differ[:2]]}


def conditions(ctx: StudyContext) -> dict[str, list]:
    """Every judged condition by key: named cells at every β first (the paper's), then the
    control cells (no persona, β₀), then the per-layer sweep at β₀
    (:func:`~persona_refusal.study.gating.readd.judged_points`)."""
    b0 = ctx.betas[0]
    return judged_points([ctx.steer()], ctx.readd, cells=ctx.layers["readd_cells"], cell_betas=ctx.betas,
                         control_betas=[b0], layers=ctx.layers["judged_layers"], layer_betas=[b0])


def harmless_conditions(ctx: StudyContext) -> dict[str, list]:
    """The benign control's conditions: the unedited model, every cell at every β and every
    judged layer at β₀, all without the persona."""
    b0, cells = ctx.betas[0], ctx.layers["readd_cells"]
    out: dict[str, list] = {"baseline": []}
    for name, layers in cells.items():
        for b in ctx.betas:
            out[f"cell:{name}:{b}"] = [ctx.readd(b, l) for l in layers]
    for l in ctx.layers["judged_layers"]:
        out[f"layer:{b0}@{l}"] = [ctx.readd(b0, l)]
    return out


def induced_stats(g: dict, base: dict, judges: Sequence[str], *, n_boot: int, seed: int) -> dict:
    """A condition's rates on harmless prompts (:func:`judged_stats`) and, per judge, the
    refusal it induces over the unedited model: ``induced = {"diff", "ci", "n"}`` (paired
    bootstrap over prompts)."""
    out = judged_stats(g, None, None, judges, n_boot=n_boot, seed=seed)
    for name in judges:
        out[name]["induced"] = paired_difference(_refused(g, name), _refused(base, name), n_boot=n_boot, seed=seed)
    return out


def _dedupe(conds: dict[str, list]) -> tuple[dict[str, str], dict[str, list]]:
    """Conditions with the same edits (a one-layer cell and that layer of the sweep) run once:
    ``(alias of each key, the conditions to run)``."""
    canon: dict[tuple, str] = {}
    alias = {key: canon.setdefault(tuple(id(i) for i in ivs), key) for key, ivs in conds.items()}
    return alias, {k: conds[k] for k in conds if alias[k] == k}


def _harmless_record(ctx: StudyContext, judges: Sequence[str], kw: dict) -> dict:
    hl = ctx.harmless_control_prompts
    conds = harmless_conditions(ctx)
    alias, todo = _dedupe(conds)
    with ctx.timer("gating_judged_harmless"):
        gens = ctx.judged("gating_judged_harmless", hl, todo, "judged control on harmless prompts",
                          group_rows=GROUP_ROWS)
    base = gens["baseline"]
    cells = ctx.layers["readd_cells"]
    rec: dict = {"n": len(hl), "prompts": "eval_harmless", "beta0": ctx.betas[0], "betas": ctx.betas,
                 "baseline": judged_stats(base, None, None, judges, **kw), "cells": [], "layers": []}
    for key in conds:
        if key == "baseline":
            continue
        g = gens[alias[key]]
        kind, _, rest = key.partition(":")
        if kind == "cell":
            name, b = rest.rsplit(":", 1)
            rec["cells"].append({"cell": name, "layers": cells[name], "beta": float(b),
                                 **induced_stats(g, base, judges, **kw)})
        else:
            b, l = rest.split("@")
            rec["layers"].append({"layer": int(l), "beta": float(b), **induced_stats(g, base, judges, **kw)})
    return rec


@register("gating_judged", requires=("eval",), order=75)
def run(ctx: StudyContext) -> GatingJudgedResult:
    """Refusal re-added per layer and per cell, judged from generated long replies."""
    cfg = ctx.cfg
    if not cfg.judged_sweep:
        return GatingJudgedResult(None)
    ev, judges = ctx.eval_harmful, list(ctx.judges)
    conds = conditions(ctx)
    alias, todo = _dedupe(conds)
    with ctx.timer("gating_judged"):
        ref = ctx.judged("eval", ev, {"baseline": [], "persona": [ctx.steer()]}, "eval: baseline + persona")
        gens = ctx.judged("gating_judged", ev, todo, "judged gating", group_rows=GROUP_ROWS)
    base, pers = ref["baseline"], ref["persona"]
    kw = ctx.boot
    b0 = ctx.betas[0]
    record: dict = {
        "n": len(ev), "max_new_tokens": cfg.max_new_tokens, "judge": cfg.judge, "judges": judges,
        "early_stop": cfg.early_stop, "beta0": b0, "betas": ctx.betas, "alpha": ctx.alpha,
        "persona_layer": ctx.persona_layer, "cells": ctx.layers["readd_cells"],
        "baseline": judged_stats(base, None, None, judges, **kw), "persona": judged_stats(pers, None, None, judges, **kw),
    }
    record.update(judged_rows({key: gens[alias[key]] for key in conds}, ctx.layers["readd_cells"], base, pers, judges,
                              **kw))
    every = [(key, gens[alias[key]]) for key in conds] + [("baseline", base), ("persona", pers)]
    record["agreement"] = agreement((g for _, g in every), cfg.judge)
    record["judge_disagreements"] = [d for key, g in every if (d := _disagreements(key, g, ev, judges))]
    if cfg.control_harmless:
        record["control_harmless"] = _harmless_record(ctx, judges, kw)
    return GatingJudgedResult(record)
