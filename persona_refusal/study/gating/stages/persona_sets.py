"""Stage ``persona_sets``: the persona direction of each persona set (``persona_sets``)
against the refusal direction, layer by layer.

For every set (the study's own reuses its direction; others get their own rollouts,
saved as ``directions/persona_set_<name>``), per layer: the cosine with that layer's
diff-in-means refusal direction, the cosine with the study's refusal direction, and the
share of the persona direction's squared norm that lies along the study's refusal
direction (cos²; a direction made of apology tokens would put much of itself there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


from persona_refusal import ops
from persona_refusal.directions import LayerDirections
from persona_refusal.persona import persona_direction, persona_rollouts
from persona_refusal.storage import write_json
from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.store import read_object

__all__ = ["PersonaSetsResult"]


@dataclass
class PersonaSetsResult(StageResult):
    persona_sets: dict | None
    """Set name → per-layer cosines, share along the refusal direction, norms, rollout
    summary. ``None`` when no set is configured."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem if ("/" in name or "." in name) else name)[:40]


def _directions(ctx: StudyContext, name: str) -> tuple[LayerDirections, dict]:
    cfg, cm, store = ctx.cfg, ctx.cm, ctx.store
    if name == cfg.personas and ctx.given_persona is None:
        return ctx.result("persona").directions, ctx.result("persona").persona_direction["rollouts"]
    stem = ctx.out / "directions" / f"persona_set_{_slug(name)}"
    files = [stem.with_name(stem.name + ext) for ext in (".json", ".safetensors")]
    ro_path = stem.with_name(stem.name + "_rollouts.json")
    saved = store.read_back(f"the persona directions of set {name}", [*files, ro_path], lambda: (
        LayerDirections.load(stem, chat_model=cm), read_object(ro_path)["summary"]))
    if saved is None:
        ro = persona_rollouts(cm, ctx.personas[name], **ctx.rollout_options())
        made = persona_direction(cm, ro, method=cfg.persona_method, progress=ctx.progress)
        write_json(ro_path, {"summary": ro.summary(), "rollouts": [r.to_dict() for r in ro.rollouts]})
        made.save(stem)
        saved = LayerDirections.load(stem, chat_model=cm), read_object(ro_path)["summary"]
    return saved


@register("persona_sets", requires=("persona", "refusal"), order=135)
def run(ctx: StudyContext) -> PersonaSetsResult:
    """Each persona set's direction against the refusal direction, per layer."""
    if not ctx.cfg.persona_sets:
        return PersonaSetsResult(None)
    L = ctx.cm.n_layers
    per_layer, refusal = ctx.result("refusal").layer_directions, ctx.result("refusal").direction
    r_hat = refusal.unit.double()
    out = {}
    with ctx.timer("persona_sets"):
        for name in ctx.cfg.persona_sets:
            dirs, summary = _directions(ctx, name)
            cos_layer, cos_used, share, norms = [], [], [], []
            for l in range(L):
                v = dirs.vectors[l].double()
                norms.append(float(v.norm()))
                if dirs.is_zero(l):
                    cos_layer.append(None), cos_used.append(None), share.append(None)
                    continue
                c = float(ops.cosine(v, r_hat))
                cos_used.append(c)
                share.append(c * c)
                cos_layer.append(None if per_layer.is_zero(l) else float(ops.cosine(v, per_layer.vectors[l].double())))
            out[name] = {"layers": list(range(L)), "cosine_layer_refusal": cos_layer, "cosine_refusal": cos_used,
                         "share_along_refusal": share, "norms": norms, "rollouts": summary,
                         "describe": ctx.personas[name].describe()}
    return PersonaSetsResult({"sets": out, "refusal_layer": refusal.layer,
                              "note": "share_along_refusal = cos² with the study's refusal direction: the part of "
                                      "the persona direction's squared norm along it"})
