"""Stage ``persona``: the compliant-persona direction at every layer, from rollouts under
compliant and refuser system prompts (or given)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import LayerDirections
from persona_refusal.persona import persona_direction, persona_rollouts
from persona_refusal.storage import read_json, write_json
from persona_refusal.study.context import StudyContext, check_persona_layers
from persona_refusal.study.registry import StageResult, memory, register


@dataclass
class PersonaResult(StageResult):
    persona_direction: dict
    """Layers, norms, the rollouts' summary, the method, the file."""
    directions: LayerDirections = memory()
    """The persona direction at every layer."""


@register("persona", order=20)
def run(ctx: StudyContext) -> PersonaResult:
    """The persona direction: rollouts, the in-character filter, diff-in-means at every layer."""
    cm, cfg = ctx.cm, ctx.cfg
    d_dir = ctx.out / "directions"
    path = d_dir / "persona"
    if cfg.persona_direction and not (d_dir / "persona.json").is_file():
        given = LayerDirections.load(cfg.persona_direction, chat_model=cm, allow_transfer=cfg.allow_transfer)
        check_persona_layers(given, cm.n_layers)
        write_json(d_dir / "persona_rollouts.json", {"summary": {"source": str(cfg.persona_direction)}, "rollouts": []})
        given.save(path)
    if not (d_dir / "persona.json").is_file():
        with ctx.timer("persona"):
            ro = persona_rollouts(cm, n_questions=cfg.persona_questions, max_new_tokens=cfg.persona_max_new_tokens,
                                  filter=cfg.persona_filter, judge=ctx.judge, batch_size=cfg.batch_size,
                                  progress=ctx.progress)
            dirs = persona_direction(cm, ro, method=cfg.persona_method, progress=ctx.progress)
            write_json(d_dir / "persona_rollouts.json",
                       {"summary": ro.summary(), "rollouts": [r.to_dict() for r in ro.rollouts]})
            dirs.save(path)
    dirs = LayerDirections.load(path, chat_model=cm, allow_transfer=cfg.allow_transfer)
    summary = read_json(d_dir / "persona_rollouts.json")["summary"]
    record = {"layers": list(dirs.layers), "norms": dirs.norms.tolist(), "rollouts": summary,
              "method": cfg.persona_method, "file": "directions/persona.json"}
    return PersonaResult(record, directions=dirs)
