"""Stage ``refusal``: the diff-in-means grid on the train prompts, then Arditi et al.'s
selection on the val prompts (or a given direction)."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.extraction import extract_directions
from persona_refusal.selection import select_refusal_direction
from persona_refusal.storage import read_json, write_json
from persona_refusal.study.context import StudyContext
from persona_refusal.study.registry import StageResult, memory, register


@dataclass
class RefusalResult(StageResult):
    refusal_direction: dict
    """Layer, position, norm, hook name, the selection's chosen candidate, the file."""
    grid: DirectionGrid = memory()
    """Every (position, layer) diff-in-means candidate."""
    direction: Direction = memory()
    """The refusal direction used by the study."""
    layer_directions: LayerDirections = memory()
    """Each layer's own diff-in-means direction at the last prompt token."""
    selection: dict = memory()
    """The selection report (``directions/refusal_selection.json``)."""


def restrict(grid: DirectionGrid, positions, layers) -> DirectionGrid:
    """The sub-grid of these positions and layers."""
    pi = [grid.positions.index(p) for p in positions]
    li = [grid.layers.index(l) for l in layers]
    return DirectionGrid(positive_mean=grid.positive_mean[pi][:, li], negative_mean=grid.negative_mean[pi][:, li],
                         positions=tuple(positions), layers=tuple(layers), name=grid.name, model_id=grid.model_id,
                         model_checksum=grid.model_checksum, n_positive=grid.n_positive, n_negative=grid.n_negative,
                         provenance=grid.provenance)


@register("refusal", order=10)
def run(ctx: StudyContext) -> RefusalResult:
    """The refusal direction: diff-in-means candidates, Arditi et al.'s selection."""
    cm, cfg = ctx.cm, ctx.cfg
    d_dir = ctx.out / "directions"
    grid_path, dir_path = d_dir / "refusal_grid", d_dir / "refusal"
    if not (d_dir / "refusal_grid.json").is_file():
        with ctx.timer("refusal_grid"):
            grid = extract_directions(cm, ctx.prompts["train_harmful"], ctx.prompts["train_harmless"],
                                      batch_size=cfg.batch_size, progress=ctx.progress)
            grid.save(grid_path)
    grid = DirectionGrid.load(grid_path, chat_model=cm)
    if cfg.refusal_direction and not (d_dir / "refusal.json").is_file():
        given = Direction.load(cfg.refusal_direction, chat_model=cm, allow_transfer=cfg.allow_transfer)
        cm.check_layer(given.layer, what="the given refusal direction's layer")
        write_json(d_dir / "refusal_selection.json", {"chosen": None, "source": str(cfg.refusal_direction),
                                                      "candidates": [], "settings": {"given": True}})
        given.save(dir_path)
    if not (d_dir / "refusal.json").is_file():
        with ctx.timer("refusal_selection"):
            sub = restrict(grid, cfg.selection_positions, ctx.layers["selection_layers"])
            try:
                direction, report = select_refusal_direction(
                    cm, sub, ctx.prompts["val_harmful"], ctx.prompts["val_harmless"],
                    kl_threshold=cfg.kl_threshold, induce_threshold=cfg.induce_threshold,
                    fallback=cfg.selection_fallback, batch_size=cfg.batch_size, progress=ctx.progress)
            except ConfigError as e:
                if getattr(e, "report", None) is not None:
                    write_json(d_dir / "refusal_selection_failed.json", e.report.to_dict())
                raise
            write_json(d_dir / "refusal_selection.json", report.to_dict())
            direction.save(dir_path)
    direction = Direction.load(dir_path, chat_model=cm, allow_transfer=cfg.allow_transfer)
    selection = read_json(d_dir / "refusal_selection.json")
    record = {"layer": direction.layer, "position": direction.position, "norm": direction.norm,
              "hook_name": direction.hook_name, "selection": selection.get("chosen"), "file": "directions/refusal.json"}
    return RefusalResult(record, grid=grid, direction=direction, layer_directions=grid.layer_directions(-1),
                         selection=selection)
