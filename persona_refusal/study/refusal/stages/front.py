"""Stage ``front``: every candidate direction measured on the val split — the refusal-vs-KL front.

For each candidate (position × layer of ``front_positions`` × ``front_layers``; zero
vectors are skipped and listed) and each position's per-layer directions (each layer's
own candidate ablated at that layer), on the first ``n_val`` val prompts per side:

* **bypass** — the first-token refusal log-odds (and rate) of the harmful prompts with
  the candidate ablated at every layer (lower: less refusal);
* **KL** — ``KL(unedited ‖ ablated)`` of the next-token distribution on the harmless
  prompts, mean with a bootstrap interval;
* **induce** — the first-token refusal log-odds of the harmless prompts with the
  candidate added (coefficient 1, Arditi et al.'s setting) at its own layer (the run
  starts at that layer from the unedited residual stream).

Then the most promising ``front_judged`` candidates (:func:`judged_keys`), every
per-layer row and the unedited model answer the first ``n_front`` harmful val prompts
(``front_max_new_tokens`` tokens, several conditions per batch, checkpointed in groups):
judged refusal and degenerate share with Wilson intervals. The Pareto fronts of refusal
(first-token bypass; judged rate) against KL are recorded by candidate key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from persona_refusal import ops
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import Rate
from persona_refusal.interventions import Ablate, AddVector
from persona_refusal.selection import CandidateScores, RuleSettings, apply_rule, pareto_front
from persona_refusal.study.refusal.context import RefusalContext
from persona_refusal.study.refusal.stages import STUDY
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.stats import bootstrap_mean, first_token_stats, outcome_rates

__all__ = ["FrontResult", "judged_keys", "key_of", "rule_settings", "GROUP_ROWS"]

GROUP_ROWS = 64
"""About this many (condition, prompt) rows are generated, then checkpointed, at a time."""


@dataclass
class FrontResult(StageResult):
    front: dict
    """Every candidate's val scores (``candidates``), the unedited levels (``baseline``),
    the Pareto fronts by candidate key, the judged keys and the settings."""
    table: list = memory()
    """The single-direction candidates as :class:`~persona_refusal.selection.CandidateScores`."""
    keys: list = memory()
    """The key of each row of :attr:`table`."""


def key_of(position: int, layer: int | None) -> str:
    """A candidate's key: ``"-1@9"``; a position's per-layer directions: ``"layers@-1"``."""
    return f"layers@{position}" if layer is None else f"{position}@{layer}"


def rule_settings(ctx: RefusalContext, baseline_induce: float | None, baseline_degenerate: float) -> RuleSettings:
    """The selection rules' parameters for this run (the degenerate ceiling is the unedited
    replies' share plus ``max_degenerate_rise``)."""
    c = ctx.cfg
    return RuleSettings(kl_threshold=c.kl_threshold, induce_threshold=c.induce_threshold,
                        max_layer=ctx.layers["max_layer"], fallback=c.rule_fallback, baseline_induce=baseline_induce,
                        kl_budget=c.kl_budget, max_degenerate=min(1.0, baseline_degenerate + c.max_degenerate_rise))


def judged_keys(table: Sequence[CandidateScores], keys: Sequence[str], settings: RuleSettings,
                count: int | str) -> list[str]:
    """Which candidates get judged replies, from their first-token scores alone: the
    ``arditi`` rule's choice, the lowest bypass within the KL budget, then the first-token
    Pareto front (bypass against KL) in order of bypass, then the rest of the candidates
    within the budget by bypass, then every other by bypass — the first ``count`` of that
    list (``"all"``: every candidate).

    Example:
        >>> rows = [CandidateScores(-1, l, bypass=float(-l), kl=0.05 * l, induce=1.0) for l in range(6)]
        >>> judged_keys(rows, [f"-1@{l}" for l in range(6)], RuleSettings(kl_budget=0.12), 3)
        ['-1@2', '-1@5', '-1@4']
    """
    ft = [CandidateScores(c.position, c.layer, c.bypass, c.kl, c.induce) for c in table]  # first-token scores only
    order: list[int] = []

    def add(i: int | None) -> None:
        if i is not None and i not in order:
            order.append(i)

    add(apply_rule("arditi", ft, settings).index)
    add(apply_rule("kl_budget", ft, settings).index)
    ok = [i for i, c in enumerate(ft) if math.isfinite(c.bypass) and math.isfinite(c.kl)]
    by_bypass = sorted(ok, key=lambda i: (ft[i].bypass, ft[i].kl, i))
    front = pareto_front([(ft[i].kl, ft[i].bypass) for i in ok])
    for i in sorted((ok[j] for j in front), key=lambda i: (ft[i].bypass, i)):
        add(i)
    for i in by_bypass:
        if ft[i].kl <= settings.kl_budget:
            add(i)
    for i in by_bypass:
        add(i)
    n = len(order) if count == "all" else int(count)
    return [keys[i] for i in order[:n]]


def _first_token_row(ctx: RefusalContext, point: dict) -> dict:
    """The summary of one candidate's first-token point."""
    kw = ctx.boot
    bypass = first_token_stats(point["bypass_refused"], point["bypass_scores"])
    row = {"bypass": bypass["score_mean"], "bypass_ci": bypass["score_ci"], "bypass_rate": bypass["refusal_rate"],
           "bypass_rate_ci": bypass["ci"], "bypass_k": bypass["k"], "n_val": bypass["n"]}
    kl = bootstrap_mean([math.nan if v is None else v for v in point["kl"]], **kw)
    row.update({"kl": kl["mean"], "kl_ci": kl["ci"]})
    if point.get("induce_scores") is not None:
        induce = first_token_stats(point["induce_refused"], point["induce_scores"])
        row.update({"induce": induce["score_mean"], "induce_rate": induce["refusal_rate"], "induce_ci": induce["ci"]})
    else:
        row.update({"induce": None, "induce_rate": None, "induce_ci": None})
    return row


def _judged_row(ctx: RefusalContext, g: dict) -> dict:
    rates = outcome_rates(g["labels"])
    n = len(g["labels"])
    return {"refusal": rates["refusal"], "degenerate": rates["degenerate"], "compliance": rates["compliance"],
            "by_judge": {name: Rate(sum(l == "refusal" for l in labels), n).to_dict()
                         for name, labels in g["labels_by_judge"].items()},
            "first_token_judged": first_token_stats(g["refused"], g["scores"])}


@register("front", requires=("grid",), order=20, study=STUDY)
def run(ctx: RefusalContext) -> FrontResult:
    """Every candidate on the val split: bypass, KL and induce scores; judged replies for the best ones."""
    cfg, cm = ctx.cfg, ctx.cm
    grid = ctx.result("grid").directions
    harm, safe = ctx.val("harmful"), ctx.val("harmless")
    n = len(harm)
    positions, layers = ctx.layers["front_positions"], ctx.layers["front_layers"]
    with ctx.timer("front_first_token"):
        ref = ctx.reference(harm + safe)  # unedited: the harmful levels and the harmless reference of KL
        ref_logits = ref.logits[n:]
        ctx.reference(safe, [l for l in layers if l > 0])  # where each addition starts

        def measure(ablate: Ablate, add: AddVector | None, layer: int | None) -> dict:
            ab = ctx.forward(ctx.plan(harm + safe), [ablate], logits=True)
            point = {"bypass_refused": ab.refused[:n], "bypass_scores": ab.scores[:n],
                     "kl": ops.kl_divergence(ref_logits, ab.logits[n:]).tolist()}
            if add is not None:
                ad = ctx.from_layer(safe, [add], layer)
                point.update({"induce_refused": ad.refused, "induce_scores": ad.scores})
            return point

        from tqdm.auto import tqdm  # here, not at import: in a notebook it warns once when first imported

        candidates, skipped = [], []
        norms = grid.diff.norm(dim=-1)
        for p in positions:
            for l in layers:
                if float(norms[grid.positions.index(p), grid.layers.index(l)]) == 0.0:
                    skipped.append({"position": p, "layer": l, "why": "zero vector (both sides identical there)"})
                else:
                    candidates.append((p, l, grid.direction(p, l)))
        if not candidates:
            raise ConfigError(f"every candidate of front_positions {positions} x front_layers {layers} is a zero vector "
                              "(the prompts' activations are identical there)",
                              hint="add later layers (--front-layers): at layer 0 the template tokens are the same for "
                                   "every prompt")
        points = {}
        for p, l, d in tqdm(candidates, desc="front: candidates", disable=not ctx.progress, leave=False):
            points[key_of(p, l)] = ctx.store.point("front", key_of(p, l),
                                                   lambda d=d, l=l: measure(Ablate(d), AddVector(d, 1.0), l))
        per_layer = {p: grid.layer_directions(p) for p in positions}
        for p, ld in per_layer.items():
            points[key_of(p, None)] = ctx.store.point("front", key_of(p, None),
                                                      lambda ld=ld: measure(Ablate(ld), None, None))

    rows: dict[str, dict] = {}
    for p, l, d in candidates:
        rows[key_of(p, l)] = {"key": key_of(p, l), "kind": "single", "position": p, "layer": l, "norm": d.norm,
                              **_first_token_row(ctx, points[key_of(p, l)])}
    for p in positions:
        rows[key_of(p, None)] = {"key": key_of(p, None), "kind": "per_layer", "position": p, "layer": None,
                                 "norm": None, **_first_token_row(ctx, points[key_of(p, None)])}
    singles = [k for k, r in rows.items() if r["kind"] == "single"]
    base_h = first_token_stats(ref.refused[:n], ref.scores[:n])
    base_b = first_token_stats(ref.refused[n:], ref.scores[n:])
    table = [CandidateScores(rows[k]["position"], rows[k]["layer"], rows[k]["bypass"], rows[k]["kl"], rows[k]["induce"])
             for k in singles]

    # judged replies: the unedited model, the most promising candidates, every position's per-layer directions
    prompts = ctx.front_prompts
    # which candidates are judged depends on first-token scores only (not on the degenerate ceiling)
    chosen = judged_keys(table, singles, rule_settings(ctx, base_b["score_mean"], 0.0), cfg.front_judged)
    conds = {"none": [], **{k: [Ablate(grid.direction(rows[k]["position"], rows[k]["layer"]))] for k in chosen},
             **{key_of(p, None): [Ablate(per_layer[p])] for p in positions}}
    with ctx.timer("front_judged"):
        gens = ctx.judged("front_judged", prompts, conds, "front: judged replies",
                          max_new_tokens=cfg.front_max_new_tokens, group_rows=GROUP_ROWS)
    base_judged = _judged_row(ctx, gens["none"])
    settings = rule_settings(ctx, base_b["score_mean"], base_judged["degenerate"]["rate"])
    for k, r in rows.items():
        r["judged"] = k in gens
        r.update(_judged_row(ctx, gens[k]) if k in gens else
                 {"refusal": None, "degenerate": None, "compliance": None, "by_judge": None, "first_token_judged": None})
    table = [CandidateScores(c.position, c.layer, c.bypass, c.kl, c.induce,
                             refusal=None if rows[k]["refusal"] is None else rows[k]["refusal"]["rate"],
                             degenerate=None if rows[k]["degenerate"] is None else rows[k]["degenerate"]["rate"])
             for k, c in zip(singles, table)]
    ok = [i for i, c in enumerate(table) if math.isfinite(c.bypass) and math.isfinite(c.kl)]
    ft_front = [singles[ok[j]] for j in pareto_front([(table[i].kl, table[i].bypass) for i in ok])]
    jd = [i for i in ok if table[i].refusal is not None]
    judged_front = [singles[jd[j]] for j in pareto_front([(table[i].kl, table[i].refusal) for i in jd])]
    record = {
        "n_val": n, "n_front": len(prompts), "max_new_tokens": cfg.front_max_new_tokens, "judge": cfg.judge,
        "judges": list(ctx.judges), "early_stop": cfg.early_stop, "positions": positions, "layers": layers,
        "n_layers": cm.n_layers, "kl_budget": cfg.kl_budget, "induce_coeff": 1.0,
        "baseline": {"harmful_first_token": base_h, "harmless_first_token": base_b, "judged": base_judged},
        "candidates": list(rows.values()), "skipped": skipped, "judged_keys": chosen,
        "pareto_first_token": ft_front, "pareto_judged": judged_front,
        "degenerate_ceiling": settings.max_degenerate,
    }
    return FrontResult(record, table=table, keys=singles)
