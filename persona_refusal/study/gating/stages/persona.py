"""Stage ``persona``: the compliant-persona direction at every layer, from rollouts under
compliant and refuser system prompts (or given)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import LayerDirections
from persona_refusal.persona import persona_direction, persona_rollouts
from persona_refusal.storage import read_json, write_json
from persona_refusal.study.gating.context import StudyContext, given_stem
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.store import read_object


@dataclass
class PersonaResult(StageResult):
    persona_direction: dict
    """Layers, norms, the rollouts' summary, the method, the file."""
    directions: LayerDirections = memory()
    """The persona direction at every layer."""


@register("persona", order=20)
def run(ctx: StudyContext) -> PersonaResult:
    """The persona direction: rollouts, the in-character filter, diff-in-means at every layer."""
    cm, cfg, store = ctx.cm, ctx.cfg, ctx.store
    d_dir = ctx.out / "directions"
    path, ro_path = d_dir / "persona", d_dir / "persona_rollouts.json"
    pair = [d_dir / "persona.json", d_dir / "persona.safetensors"]
    if ctx.given_persona is not None:  # read before the run folder was opened: never re-read from it
        dirs = ctx.given_persona
        if given_stem(cfg.persona_direction).resolve() != path.resolve() and store.read_back(
                "the copy of the given persona directions", pair,
                lambda: LayerDirections.load(path, chat_model=cm, allow_transfer=cfg.allow_transfer)) is None:
            dirs.save(path)
        summary = store.read_back("the persona rollouts record", [ro_path], lambda: read_object(ro_path)["summary"])
        if summary is None:
            write_json(ro_path, {"summary": {"source": str(cfg.persona_direction)}, "rollouts": []})
            summary = read_json(ro_path)["summary"]
    else:
        saved = store.read_back("the persona directions", [*pair, ro_path], lambda: (
            LayerDirections.load(path, chat_model=cm, allow_transfer=cfg.allow_transfer),
            read_object(ro_path)["summary"]))
        if saved is None:
            with ctx.timer("persona"):
                ro = persona_rollouts(cm, ctx.personas[cfg.personas], **ctx.rollout_options())
                made = persona_direction(cm, ro, method=cfg.persona_method, progress=ctx.progress)
                write_json(ro_path, {"summary": ro.summary(), "rollouts": [r.to_dict() for r in ro.rollouts]})
                made.save(path)
            saved = (LayerDirections.load(path, chat_model=cm, allow_transfer=cfg.allow_transfer),
                     read_json(ro_path)["summary"])
        dirs, summary = saved
    record = {"layers": list(dirs.layers), "norms": dirs.norms.tolist(), "rollouts": summary,
              "balance": cfg.persona_balance,
              "method": cfg.persona_method, "file": "directions/persona.json",
              "personas": cfg.personas if ctx.given_persona is None else None}
    return PersonaResult(record, directions=dirs)
