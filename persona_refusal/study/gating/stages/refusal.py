"""Stage ``refusal``: the diff-in-means grid on the train prompts, then Arditi et al.'s
selection on the val prompts, a fixed layer (the paper's protocol), or a given direction."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.selection import select_refusal_direction
from persona_refusal.storage import read_json, write_json
from persona_refusal.study.gating.context import StudyContext, given_stem
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.store import read_object


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


def _pair(stem) -> list:
    """The two files of a saved direction."""
    return [stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")]


def _is_given(cfg_path, stem) -> bool:
    """The given direction's files are the run folder's own copy (given from this folder)."""
    return given_stem(cfg_path).resolve() == stem.resolve()


@register("refusal", order=10)
def run(ctx: StudyContext) -> RefusalResult:
    """The refusal direction: diff-in-means candidates, Arditi et al.'s selection."""
    cm, cfg, store = ctx.cm, ctx.cfg, ctx.store
    d_dir = ctx.out / "directions"
    dir_path, sel_path = d_dir / "refusal", d_dir / "refusal_selection.json"
    grid = ctx.diff_in_means_grid(ctx.prompts["train_harmful"], ctx.prompts["train_harmless"])
    if ctx.given_refusal is not None:  # read before the run folder was opened: never re-read from it
        direction = ctx.given_refusal
        if not _is_given(cfg.refusal_direction, dir_path) and store.read_back(
                "the copy of the given refusal direction", _pair(dir_path),
                lambda: Direction.load(dir_path, chat_model=cm, allow_transfer=cfg.allow_transfer)) is None:
            direction.save(dir_path)
        selection = store.read_back("the refusal selection record", [sel_path], lambda: read_object(sel_path))
        if selection is None:
            write_json(sel_path, {"chosen": None, "source": str(cfg.refusal_direction), "candidates": [],
                                  "settings": {"given": True}})
            selection = read_json(sel_path)
    elif ctx.layers["refusal_layer"] is not None:  # a fixed layer, last prompt token, no selection
        layer = ctx.layers["refusal_layer"]
        direction = grid.direction(-1, layer)
        selection = {"chosen": {"layer": layer, "position": -1, "rule": "fixed layer"}, "candidates": [],
                     "settings": {"rule": "fixed layer", "layer": layer, "position": -1}}
        if store.read_back("the fixed-layer refusal direction", [*_pair(dir_path), sel_path], lambda: (
                Direction.load(dir_path, chat_model=cm), read_object(sel_path))) is None:
            write_json(sel_path, selection)
            direction.save(dir_path)
        direction, selection = Direction.load(dir_path, chat_model=cm), read_json(sel_path)
    else:
        saved = store.read_back("the selected refusal direction", [*_pair(dir_path), sel_path], lambda: (
            Direction.load(dir_path, chat_model=cm, allow_transfer=cfg.allow_transfer), read_object(sel_path)))
        if saved is None:
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
                write_json(sel_path, report.to_dict())
                direction.save(dir_path)
            saved = Direction.load(dir_path, chat_model=cm, allow_transfer=cfg.allow_transfer), read_json(sel_path)
        direction, selection = saved
    record = {"layer": direction.layer, "position": direction.position, "norm": direction.norm,
              "hook_name": direction.hook_name, "selection": selection.get("chosen"), "file": "directions/refusal.json"}
    return RefusalResult(record, grid=grid, direction=direction, layer_directions=grid.layer_directions(-1),
                         selection=selection)
