"""Stage ``edits``: directional ablation vs ACE vs activation addition, on the test split.

Marshall et al. argue that refusal is an affine function of the activation: an edit
should move the component along the refusal direction ``r̂`` *relative to a reference
point* ``μ`` (the harmless mean), ``x − ((x − μ)·r̂) r̂ + α·r`` (ACE), rather than to zero
(directional ablation) or by a fixed offset (activation addition). With the direction the
``select`` stage chose (val split) and the strength ``calibrate`` chose (val split), every
edit answers the **test** prompts (judged replies of ``max_new_tokens`` tokens):

============  ============================================  ==========================
edit          what                                          prompts
============  ============================================  ==========================
none          the model as it is                            harmful, harmless, borderline
ablate        ``x − (x·r̂) r̂`` at every layer and site       harmful, borderline
ablate_layers each layer's own direction ablated there      harmful, borderline
ace0          ACE α = 0 (erase) at the direction's layer    harmful, borderline
ace0_layers   ACE α = 0 at every layer, per-layer directions  harmful, borderline
add           ``x + c·r`` at the direction's layer          harmless, borderline
ace1          ACE α = 1 (induce) at the direction's layer   harmless, borderline
ace1_layers   ACE α = 1 at every layer, per-layer directions  harmless, borderline
============  ============================================  ==========================

Each edit also gets the KL of its next-token distribution on the harmless test prompts
(bootstrap interval). Rates carry Wilson intervals; differences between edits on the same
prompts (refusal, degenerate share, KL) carry paired bootstrap intervals over prompts.
``checks`` measures, on a few test prompts, that the edits do what they say at the
direction's layer: after ablation ``x·r̂ = 0``, after ACE α = 0 ``x·r̂ = μ·r̂``, after ACE
α = 1 ``x·r̂ = μ·r̂ + |r|``. The choices of the other selection rules (``test_rules``), when
they differ, are ablated on the harmful test prompts too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona_refusal import ops
from persona_refusal.evaluation import Rate
from persona_refusal.interventions import Ablate, AddVector, AffineEdit, Intervention
from persona_refusal.study.refusal.context import RefusalContext
from persona_refusal.study.refusal.stages import STUDY
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.stats import bootstrap_mean, first_token_stats, outcome_rates, paired_difference

__all__ = ["EditsResult", "EDITS", "SETS", "COMPARISONS", "edit_interventions"]

GROUP_ROWS = 128
"""About this many (condition, prompt) rows are generated, then checkpointed, at a time."""

EDITS: dict[str, str] = {
    "none": "unedited",
    "ablate": "directional ablation, every layer",
    "ablate_layers": "ablation of each layer's own direction",
    "ace0": "ACE α = 0 at the direction's layer",
    "ace0_layers": "ACE α = 0 at every layer (per-layer directions)",
    "add": "activation addition at the direction's layer",
    "ace1": "ACE α = 1 at the direction's layer",
    "ace1_layers": "ACE α = 1 at every layer (per-layer directions)",
}
"""Every edit of the stage, with a short label."""

SETS: dict[str, tuple[str, ...]] = {
    "harmful": ("none", "ablate", "ablate_layers", "ace0", "ace0_layers"),
    "harmless": ("none", "add", "ace1", "ace1_layers"),
    "borderline": tuple(EDITS),
}
"""Which edits answer which test prompts."""

COMPARISONS: dict[str, tuple[tuple[str, str], ...]] = {
    "harmful": (("ace0", "ablate"), ("ace0_layers", "ablate"), ("ablate_layers", "ablate"), ("ace0_layers", "ace0")),
    "harmless": (("ace1", "add"), ("ace1_layers", "add"), ("ace1_layers", "ace1")),
    "borderline": (("ace0", "ablate"), ("ace1", "add"), ("ace0_layers", "ablate_layers")),
    "kl": (("ace0", "ablate"), ("ace0_layers", "ablate"), ("ablate_layers", "ablate"), ("ace1", "add"),
           ("ace1_layers", "ace1")),
}
"""Pairs ``(a, b)`` whose paired difference ``a − b`` is reported, per prompt set (and on
KL); every edit is also compared with ``none`` on each set it answers."""


@dataclass
class EditsResult(StageResult):
    edits: dict
    """Per (set, edit): refusal / compliance / degenerate rates (Wilson), each judge's
    refusal, first-token statistics; KL per edit (bootstrap); paired differences; the
    edits' checks; the other rules' choices on test; sizes and settings."""
    examples: dict
    """The first three (instruction, reply, label) of every (set, edit)."""


def edit_interventions(r, layer_dirs, coeff: float) -> dict[str, list[Intervention]]:
    """The interventions of every edit of :data:`EDITS`, for direction ``r``, the per-layer
    directions ``layer_dirs`` and the addition strength ``coeff``."""
    return {"none": [], "ablate": [Ablate(r)], "ablate_layers": [Ablate(layer_dirs)], "ace0": [AffineEdit(r, 0.0)],
            "ace0_layers": [AffineEdit(layer_dirs, 0.0)], "add": [AddVector(r, coeff)], "ace1": [AffineEdit(r, 1.0)],
            "ace1_layers": [AffineEdit(layer_dirs, 1.0)]}


def _checks(ctx: RefusalContext, r, ivs: dict[str, list[Intervention]]) -> dict:
    """How far each edit's result at the direction's layer is from what it promises, on the
    first test prompts (every position): the largest ``|x·r̂ − target|``, and the typical
    ``|x·r̂|`` before editing for scale."""
    prompts = list(ctx.prompts["test_harmful"])[:8]
    plan, layer = ctx.plan(prompts), r.layer
    r_hat, mu = ops.unit(r.vector.double()), r.reference.double()
    targets = {"ablate": 0.0, "ace0": float(mu @ r_hat), "ace1": float(mu @ r_hat) + r.norm}

    def proj(edit: str) -> torch.Tensor:
        out = ctx.forward(plan, ivs[edit], capture=[layer])
        return torch.cat([t.double().reshape(-1, t.shape[-1]) for t in out.resid[layer]]) @ r_hat

    before = proj("none")
    rec = {"layer": layer, "n_prompts": len(prompts), "scale": float(before.abs().mean()),
           "targets": targets}
    for edit, target in targets.items():
        rec[f"{edit}_max_error"] = float((proj(edit) - target).abs().max())
    return rec


@register("edits", requires=("calibrate",), order=50, study=STUDY)
def run(ctx: RefusalContext) -> EditsResult:
    """Ablation vs ACE vs addition on the test split: refusal, borderline prompts, KL, degenerate share."""
    cfg = ctx.cfg
    sel = ctx.result("select")
    r, layer_dirs = sel.direction, sel.layer_directions
    coeff = ctx.result("calibrate").coeff
    ivs = edit_interventions(r, layer_dirs, coeff)
    grid = ctx.result("grid").directions
    extra = {}  # the other rules' distinct choices, ablated on harmful test prompts
    for rule in cfg.test_rules:
        key = sel.choices.get(rule)
        if key is not None and key != sel.refusal_direction["key"]:
            pos, layer = (int(x) for x in key.split("@"))
            ivs.setdefault(f"rule:{key}", [Ablate(grid.direction(pos, layer))])
            extra[rule] = f"rule:{key}"
    sets = {"harmful": list(ctx.prompts["test_harmful"]), "harmless": list(ctx.prompts["test_harmless"]),
            "borderline": list(ctx.prompts["test_borderline"])}
    conds = {s: list(edits) + (sorted(set(extra.values())) if s == "harmful" else []) for s, edits in SETS.items()}
    gens: dict[str, dict[str, dict]] = {}
    with ctx.timer("edits_judged"):
        for s, prompts in sets.items():
            got = ctx.judged("edits", prompts, {f"{s}/{e}": ivs[e] for e in conds[s]}, f"edits: {s}",
                             max_new_tokens=cfg.max_new_tokens, group_rows=GROUP_ROWS)
            gens[s] = {e: got[f"{s}/{e}"] for e in conds[s]}
    kw = ctx.boot
    with ctx.timer("edits_kl"):
        safe = sets["harmless"]
        ref = ctx.reference(safe)
        kl_edits = [e for e in ivs if e != "none"]
        kls = {e: ctx.store.point("edits_kl", e, lambda e=e: ops.kl_divergence(
            ref.logits, ctx.forward(ctx.plan(safe), ivs[e], logits=True).logits).tolist()) for e in kl_edits}
        checks = _checks(ctx, r, ivs)

    def row(s: str, e: str) -> dict:
        g = gens[s][e]
        n = len(g["labels"])
        return {"set": s, "edit": e, "label": EDITS.get(e, f"ablation of the {e[5:]} candidate"),
                **outcome_rates(g["labels"]),
                "by_judge": {name: Rate(sum(l == "refusal" for l in labels), n).to_dict()
                             for name, labels in g["labels_by_judge"].items()},
                "first_token": first_token_stats(g["refused"], g["scores"])}

    def flags(s: str, e: str, label: str) -> list[bool]:
        return [l == label for l in gens[s][e]["labels"]]

    differences = []
    for s in sets:
        pairs = [(e, "none") for e in conds[s] if e != "none"] + [p for p in COMPARISONS[s]]
        for a, b in pairs:
            for measure in ("refusal", "degenerate"):
                differences.append({"set": s, "measure": measure, "a": a, "b": b,
                                    **paired_difference(flags(s, a, measure), flags(s, b, measure), **kw)})
    for a, b in COMPARISONS["kl"]:
        differences.append({"set": "harmless", "measure": "kl", "a": a, "b": b, **paired_difference(kls[a], kls[b], **kw)})
    record = {
        "direction": {"layer": r.layer, "position": r.position, "norm": r.norm, "rule": sel.refusal_direction["rule"]},
        "addition": {"coeff": coeff, "layer": r.layer},
        "edits": {e: EDITS.get(e, "") for e in ivs}, "sets": {s: conds[s] for s in sets},
        "n": {s: len(p) for s, p in sets.items()}, "max_new_tokens": cfg.max_new_tokens, "judge": cfg.judge,
        "judges": list(ctx.judges), "early_stop": cfg.early_stop,
        "conditions": [row(s, e) for s in sets for e in conds[s]],
        "kl": {e: bootstrap_mean([float("nan") if v is None else v for v in kls[e]], **kw) for e in kl_edits},
        "differences": differences, "checks": checks,
        "rules_on_test": {rule: {"condition": c, "key": c[5:]} for rule, c in extra.items()},
    }
    examples = {f"{s}/{e}": [{"instruction": i, "reply": t, "label": l}
                             for i, t, l in list(zip(sets[s], gens[s][e]["replies"], gens[s][e]["labels"]))[:3]]
                for s in sets for e in conds[s]}
    return EditsResult(record, examples)
