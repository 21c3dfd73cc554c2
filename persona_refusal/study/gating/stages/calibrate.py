"""Stage ``calibrate``: the persona strength α chosen on the val split, never on the
evaluation prompts.

The grid :attr:`~persona_refusal.study.gating.config.SteeringConfig.calibration_alphas` is walked
from the smallest α up. At each α the model answers the harmful and the harmless val
prompts with persona steering on (judged replies of ``calibration_max_new_tokens``
tokens, the headline judge); the first α whose harmful val refusal rate is at most
``calibration_target`` and whose harmless val replies are at most
``calibration_max_degenerate`` degenerate is chosen, and the walk stops. When no α
passes, the α with the lowest harmful val refusal among the coherent ones is used (or,
if none is coherent, the smallest α), and the record says so. Without
``calibrate_alpha`` the stage only records the configured α.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.stats import outcome_rates

__all__ = ["CalibrationResult", "choose_alpha"]


@dataclass
class CalibrationResult(StageResult):
    calibration: dict
    """``calibrated``, the chosen ``alpha``, the rule, and one row per α tried (val only)."""
    alpha: float = memory()
    """The persona strength every later stage uses."""


def passes(row: dict, target: float, max_degenerate: float) -> bool:
    """Whether one calibration row meets the target refusal and the coherence bar."""
    return row["refusal"]["rate"] <= target and row["harmless_degenerate"]["rate"] <= max_degenerate


def choose_alpha(rows: list[dict], target: float, max_degenerate: float) -> tuple[float, str]:
    """The α of the first passing row (rows in grid order), else a documented fallback.

    Returns ``(alpha, reason)``.

    Example:
        >>> rows = [{"alpha": a, "refusal": {"rate": r}, "harmless_degenerate": {"rate": 0.0}}
        ...         for a, r in ((1.0, 0.6), (2.0, 0.05), (3.0, 0.0))]
        >>> choose_alpha(rows, 0.1, 0.25)
        (2.0, 'smallest α meeting the target')
    """
    for row in rows:
        if passes(row, target, max_degenerate):
            return float(row["alpha"]), "smallest α meeting the target"
    coherent = [r for r in rows if r["harmless_degenerate"]["rate"] <= max_degenerate]
    if coherent:
        best = min(coherent, key=lambda r: (r["refusal"]["rate"], r["alpha"]))
        return float(best["alpha"]), "no α met the target: the coherent α with the lowest val refusal"
    return float(rows[0]["alpha"]), "no α kept harmless replies coherent: the smallest α"


@register("calibrate", requires=("steering",), order=35)
def run(ctx: StudyContext) -> CalibrationResult:
    """The persona strength α, calibrated on the val prompts (or as configured)."""
    cfg = ctx.cfg
    if not cfg.calibrate_alpha:
        return CalibrationResult({"calibrated": False, "alpha": cfg.persona_alpha, "rows": []}, alpha=cfg.persona_alpha)
    harmful, harmless = list(ctx.prompts["val_harmful"]), list(ctx.prompts["val_harmless"])
    prompts = harmful + harmless
    rows = []
    with ctx.timer("calibrate"):
        for a in cfg.calibration_alphas:
            g = ctx.judged("calibrate", prompts, {f"{a}": [ctx.steer(a)]}, f"calibrate α = {a:g}",
                           max_new_tokens=cfg.calibration_max_new_tokens)[f"{a}"]
            harm = outcome_rates(g["labels"][: len(harmful)])
            safe = outcome_rates(g["labels"][len(harmful):])
            rows.append({"alpha": a, "refusal": harm["refusal"], "degenerate": harm["degenerate"],
                         "harmless_refusal": safe["refusal"], "harmless_degenerate": safe["degenerate"],
                         "by_judge": {name: outcome_rates(labels[: len(harmful)])["refusal"]
                                      for name, labels in g["labels_by_judge"].items()}})
            if passes(rows[-1], cfg.calibration_target, cfg.calibration_max_degenerate):
                break
    alpha, reason = choose_alpha(rows, cfg.calibration_target, cfg.calibration_max_degenerate)
    record = {"calibrated": True, "alpha": alpha, "reason": reason, "rows": rows,
              "rule": {"split": "val", "target": cfg.calibration_target,
                       "max_degenerate": cfg.calibration_max_degenerate, "grid": list(cfg.calibration_alphas),
                       "max_new_tokens": cfg.calibration_max_new_tokens, "judge": cfg.judge,
                       "n_harmful": len(harmful), "n_harmless": len(harmless)}}
    return CalibrationResult(record, alpha=alpha)
