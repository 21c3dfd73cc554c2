"""Stage ``persona_orthogonal``: does the persona suppress refusal through its own refusal
component?

The compliant-persona direction ``p`` is not orthogonal to refusal: at its source layer it
has a negative cosine with the refusal direction. If the persona suppressed refusal mainly
through that component, steering with ``p`` minus its component along a refusal direction
should suppress far less, and the component alone should suppress much of what ``p`` does;
then "refusal lives downstream of persona" reads as "the persona direction contains a
negative refusal direction". Each variant is steered at the study's α (the same vector
``α·s·p̂`` as the ``persona`` condition, with a part projected out, so its norm shrinks):

* ``full``: ``p`` (the ``eval`` stage's persona condition, read back);
* ``minus:<r>``: ``p − (p·r̂) r̂`` for each refusal direction ``r``: the study's refusal
  direction (``study``) and the diff-in-means refusal direction of the injection layer
  (``injection``: the ``resid_pre`` where the persona is added; the record also gives
  ``p``'s cosine with the source layer's own direction, ``source``, when it differs);
* ``only:<r>``: the removed component ``(p·r̂) r̂`` alone;
* ``minus:random``: the control: ``p`` minus its component along a random unit direction
  ``u`` chosen to have the same |cosine| with ``p`` as the ``injection`` refusal direction
  (``u = c·p̂ + √(1−c²)·q̂``, ``q̂`` a seeded random direction orthogonal to ``p``), so the
  same share of ``p``'s norm is removed, along a direction unrelated to refusal.

Each variant's judged refusal and degenerate rates (Wilson) on the evaluation harmful
prompts, its difference from the full persona and from the baseline (paired bootstrap),
and, under each ``minus`` variant, every re-add cell at β₀ with its restoration of the gap
between the baseline and that variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from persona_refusal import ops
from persona_refusal.interventions import AddVector
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.gating.stages.gating_judged import judged_stats
from persona_refusal.study.stats import paired_difference, restoration

__all__ = ["PersonaOrthogonalResult", "orthogonal_vectors"]

GROUP_ROWS = 256


@dataclass
class PersonaOrthogonalResult(StageResult):
    persona_orthogonal: dict | None
    """``directions`` (each refusal direction's cosine with ``p`` and the share of ``p``'s
    squared norm along it), ``variants`` (rates, differences from the full persona and
    the baseline) and ``cells`` (re-add cells under each removal). ``None`` when off."""


def orthogonal_vectors(p: torch.Tensor, refusal: dict[str, torch.Tensor], *, seed: int,
                       matched: str = "injection") -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The steering vectors of the variants (float64), and a description of each direction.

    Args:
        p: the persona steering vector (``α`` not applied).
        refusal: refusal directions by tag (any norm).
        seed: seed of the random control direction.
        matched: the tag whose |cosine| with ``p`` the random control matches.

    Example:
        >>> p = torch.tensor([1.0, 1.0, 0.0, 0.0]); r = {"study": torch.tensor([1.0, 0.0, 0.0, 0.0])}
        >>> v, info = orthogonal_vectors(p, r, seed=0, matched="study")
        >>> v["minus:study"].tolist(), v["only:study"].tolist(), round(info["study"]["share"], 3)
        ([0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], 0.5)
        >>> round(float(v["minus:random"].norm() ** 2), 3)  # the same share of the norm removed
        1.0
    """
    p = p.double()
    out: dict[str, torch.Tensor] = {"full": p}
    info: dict[str, dict] = {}
    for tag, r in refusal.items():
        r_hat = ops.unit(r.double())
        comp = (p @ r_hat) * r_hat
        out[f"minus:{tag}"] = p - comp
        out[f"only:{tag}"] = comp
        c = float(ops.cosine(p, r_hat))
        info[tag] = {"cosine": c, "share": c * c}
    c = abs(info[matched]["cosine"])
    p_hat = ops.unit(p)
    for k in range(8):  # a random direction orthogonal to p (a draw along p itself is redrawn)
        q = ops.random_unit_vectors(1, p.shape[-1], seed=seed + k, dtype=torch.float64)[0]
        q = q - (q @ p_hat) * p_hat
        if float(q.norm()) > 1e-6:
            break
    q = ops.unit(q)
    u = c * p_hat + math.sqrt(max(0.0, 1 - c * c)) * q
    out["minus:random"] = p - (p @ u) * u
    info["random"] = {"cosine": float(ops.cosine(p, u)), "share": float(ops.cosine(p, u)) ** 2,
                      "matched_to": matched, "seed": seed}
    return out, info


@register("persona_orthogonal", requires=("eval", "refusal"), order=78)
def run(ctx: StudyContext) -> PersonaOrthogonalResult:
    """The persona direction without its refusal component, that component alone, and a matched random control."""
    cfg = ctx.cfg
    if not cfg.persona_orthogonal:
        return PersonaOrthogonalResult(None)
    steering = ctx.result("steering").persona_vector
    refusal_res = ctx.result("refusal")
    per_layer = refusal_res.layer_directions
    pl, src = ctx.persona_layer, ctx.layers["persona_source_layer"]
    dirs = {"study": refusal_res.direction.vector}
    layers_of = {"study": refusal_res.direction.layer, "injection": pl}
    if not per_layer.is_zero(pl):
        dirs["injection"] = per_layer.vectors[pl]
    matched = "injection" if "injection" in dirs else "study"
    vecs, info = orthogonal_vectors(steering.vector, dirs, seed=cfg.seed, matched=matched)
    for tag in info:
        if tag in layers_of:
            info[tag]["layer"] = layers_of[tag]
    if src != pl and not per_layer.is_zero(src):  # described, not steered
        c = float(ops.cosine(steering.vector.double(), per_layer.vectors[src].double()))
        info["source"] = {"cosine": c, "share": c * c, "layer": src}
    alpha, b0, cells = ctx.alpha, ctx.betas[0], ctx.layers["readd_cells"]
    steer = {name: AddVector(steering.replace(vector=v.float(), name=f"persona ({name})"), alpha, layer=pl,
                             allow_transfer=cfg.allow_transfer)
             for name, v in vecs.items() if name != "full"}
    conds: dict[str, list] = {f"variant:{name}": [iv] for name, iv in steer.items()}
    for name, iv in steer.items():
        if name.startswith("minus:"):
            for cell, layers in cells.items():
                conds[f"cell:{cell}:{name}"] = [iv, *[ctx.readd(b0, l) for l in layers]]
    ev, judges = ctx.eval_harmful, list(ctx.judges)
    with ctx.timer("persona_orthogonal"):
        base, full = ctx.store.get("eval", "baseline"), ctx.store.get("eval", "persona")
        gens = ctx.judged("persona_orthogonal", ev, conds, "persona without its refusal component",
                          group_rows=GROUP_ROWS)
    kw = ctx.boot
    head = cfg.judge
    refused = lambda g: [l == "refusal" for l in g["labels_by_judge"][head]]  # noqa: E731
    variants = [{"variant": "full", "norm_ratio": 1.0, **judged_stats(full, None, None, judges, **kw)}]
    for name in steer:
        g = gens[f"variant:{name}"]
        row = {"variant": name, "norm_ratio": float(vecs[name].norm() / vecs["full"].norm()),
               **judged_stats(g, None, None, judges, **kw),
               "vs_full": paired_difference(refused(g), refused(full), **kw),
               "vs_baseline": paired_difference(refused(g), refused(base), **kw)}
        # the share of the full persona's suppression this variant keeps:
        # (base − variant) / (base − full) = 1 − restoration of the gap by the variant
        rest, ci = restoration(refused(g), refused(base), refused(full), **kw)
        row["suppression_kept"] = None if rest is None else 1 - rest
        row["suppression_kept_ci"] = [None if ci[1] is None else 1 - ci[1], None if ci[0] is None else 1 - ci[0]]
        variants.append(row)
    cell_rows = []
    for name in steer:
        if not name.startswith("minus:"):
            continue
        for cell, layers in cells.items():
            g = gens[f"cell:{cell}:{name}"]
            cell_rows.append({"variant": name, "cell": cell, "layers": layers, "beta": b0,
                              **judged_stats(g, base, gens[f"variant:{name}"], judges, **kw)})
    return PersonaOrthogonalResult({
        "alpha": alpha, "beta0": b0, "n": len(ev), "judge": head, "persona_layer": pl, "persona_source_layer": src,
        "directions": info, "baseline": judged_stats(base, None, None, judges, **kw),
        "variants": variants, "cells": cell_rows,
    })
