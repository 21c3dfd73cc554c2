"""Stage ``select``: the refusal direction chosen from the front by each named rule.

Every rule of :data:`persona_refusal.selection.RULES` is applied to the front's score
table (val split only): ``arditi`` (Arditi et al.'s filters on first-token scores, with
the ``relative`` fallback), ``kl_budget`` (the lowest judged refusal within
``kl_budget`` nats), ``knee`` (the knee of the judged front). The configured
``selection_rule`` gives the direction every later stage uses; when it chooses nothing,
the knee does, and the record says so. The chosen direction and that position's
per-layer directions (for the per-layer edits) are saved in ``directions/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.directions import Direction, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.selection import RULES, apply_rule
from persona_refusal.study.refusal.context import RefusalContext
from persona_refusal.study.refusal.stages import STUDY
from persona_refusal.study.refusal.stages.front import rule_settings
from persona_refusal.study.registry import StageResult, memory, register

__all__ = ["SelectResult"]


@dataclass
class SelectResult(StageResult):
    refusal_direction: dict
    """The direction used: layer, position, norm, hook name, the rule that chose it (and
    the configured one), why, whether a fallback decided, its val scores, its files."""
    selection: dict
    """Every rule's choice (candidate key, position, layer, reason, fallback) and the rules' settings."""
    direction: Direction = memory()
    """The chosen direction (its reference: the harmless train mean)."""
    layer_directions: LayerDirections = memory()
    """Every layer's own diff-in-means direction at the chosen position."""
    choices: dict = memory()
    """Rule name → the chosen candidate's key (``None``: nothing chosen)."""


@register("select", requires=("front",), order=30, study=STUDY)
def run(ctx: RefusalContext) -> SelectResult:
    """The direction by each named rule (arditi, kl_budget, knee) on the val front."""
    cfg = ctx.cfg
    front = ctx.result("front")
    grid = ctx.result("grid").directions
    rec = front.front
    settings = rule_settings(ctx, rec["baseline"]["harmless_first_token"]["score_mean"],
                             rec["baseline"]["judged"]["degenerate"]["rate"])
    rows = {r["key"]: r for r in rec["candidates"]}
    choices = {rule: apply_rule(rule, front.table, settings) for rule in RULES}
    used, why = cfg.selection_rule, None
    if choices[used].index is None:
        why = f"the {used} rule chose nothing ({choices[used].reason}): the knee of the front is used"
        used = "knee"
    choice = choices[used]
    if choice.index is None:
        raise ConfigError("no candidate direction has finite val scores: nothing to choose",
                          hint="check the prompts and the model (every candidate's KL or bypass score is undefined)")
    key = front.keys[choice.index]
    row = rows[key]
    direction = grid.direction(row["position"], row["layer"])
    layer_dirs = grid.layer_directions(row["position"])
    d_dir = ctx.out / "directions"
    direction.save(d_dir / "refusal")  # derived from the saved grid: the same files on every (re)run
    layer_dirs.save(d_dir / "refusal_layers")
    val = {k: row[k] for k in ("bypass", "bypass_rate", "kl", "kl_ci", "induce", "refusal", "degenerate")}
    record = {"layer": direction.layer, "position": direction.position, "norm": direction.norm,
              "hook_name": direction.hook_name, "key": key, "rule": used, "configured_rule": cfg.selection_rule,
              "reason": choice.reason if why is None else f"{why}; {choice.reason}",
              "fallback_used": choice.fallback_used if why is None else "knee", "val": val,
              "file": "directions/refusal.json", "layers_file": "directions/refusal_layers.json"}
    selection = {
        "rules": {rule: {**c.to_dict(), "key": None if c.index is None else front.keys[c.index],
                         **({} if c.index is None else {"position": front.table[c.index].position,
                                                        "layer": front.table[c.index].layer})}
                  for rule, c in choices.items()},
        "used": used, "configured": cfg.selection_rule,
        "settings": {"kl_budget": settings.kl_budget, "kl_threshold": settings.kl_threshold,
                     "induce_threshold": settings.induce_threshold, "max_layer": settings.max_layer,
                     "max_layer_fraction": cfg.max_layer_fraction, "fallback": settings.fallback,
                     "baseline_induce": settings.baseline_induce, "max_degenerate": settings.max_degenerate,
                     "max_degenerate_rise": cfg.max_degenerate_rise, "kl_floor": settings.kl_floor,
                     "split": "val", "n_val": rec["n_val"], "n_front": rec["n_front"]},
    }
    return SelectResult(record, selection, direction=direction, layer_directions=layer_dirs,
                        choices={r: selection["rules"][r]["key"] for r in RULES})
