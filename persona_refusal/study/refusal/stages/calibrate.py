"""Stage ``calibrate``: the activation-addition strength, chosen on the val split.

Adding the raw difference of means (coefficient 1, Arditi et al.'s setting) barely moves
some small models, so the strength ``c`` of ``x + c·r`` (at the chosen direction's layer,
every position) is calibrated on the **val** harmless prompts, never on the test split:
the smallest ``c`` of ``add_coeffs`` whose mean first-token refusal log-odds reaches 0
(refusal tokens more likely than not), else the one with the highest mean. The first-token
refusal of the val borderline prompts at each ``c`` is recorded beside it (what the
addition does to safe requests that sound unsafe); it does not enter the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.interventions import AddVector
from persona_refusal.study.refusal.context import RefusalContext
from persona_refusal.study.refusal.stages import STUDY
from persona_refusal.study.registry import StageResult, memory, register
from persona_refusal.study.stats import first_token_stats

__all__ = ["CalibrateResult", "choose_coeff"]


@dataclass
class CalibrateResult(StageResult):
    addition: dict
    """The chosen ``coeff`` and ``layer``, the rule, whether its threshold was met, and one
    row per strength tried (harmless and borderline val first-token statistics)."""
    coeff: float = memory()
    """The addition strength every later stage uses."""


def choose_coeff(means: dict[float, float]) -> tuple[float, bool]:
    """The smallest strength whose mean harmless val refusal log-odds is ≥ 0, else the one
    with the highest mean; and whether the threshold was met.

    Example:
        >>> choose_coeff({1.0: -3.0, 2.0: -0.5, 4.0: 0.4, 8.0: 2.0})
        (4.0, True)
        >>> choose_coeff({1.0: -3.0, 2.0: -0.5})
        (2.0, False)
    """
    passing = [c for c, v in means.items() if v >= 0.0]
    if passing:
        return min(passing), True
    return max(means, key=lambda c: (means[c], -c)), False


@register("calibrate", requires=("select",), order=40, study=STUDY)
def run(ctx: RefusalContext) -> CalibrateResult:
    """The addition strength, calibrated on the val prompts."""
    cfg = ctx.cfg
    r = ctx.result("select").direction
    safe, border = ctx.val("harmless"), list(ctx.prompts["val_borderline"])
    rows = []
    with ctx.timer("calibrate"):
        for c in cfg.add_coeffs:
            def measure(c=c) -> dict:
                add = [AddVector(r, float(c))]
                a, b = ctx.from_layer(safe, add, r.layer), ctx.from_layer(border, add, r.layer)
                return {"harmless_refused": a.refused, "harmless_scores": a.scores, "borderline_refused": b.refused,
                        "borderline_scores": b.scores}

            pt = ctx.store.point("calibrate", f"{c}", measure)
            rows.append({"coeff": float(c),
                         "harmless": first_token_stats(pt["harmless_refused"], pt["harmless_scores"]),
                         "borderline": first_token_stats(pt["borderline_refused"], pt["borderline_scores"])})
    coeff, met = choose_coeff({row["coeff"]: row["harmless"]["score_mean"] for row in rows})
    record = {"coeff": coeff, "layer": r.layer, "threshold_met": met, "rows": rows,
              "rule": "smallest c with mean first-token refusal log-odds >= 0 on harmless val, else the highest",
              "split": "val", "n_harmless": len(safe), "n_borderline": len(border)}
    return CalibrateResult(record, coeff=coeff)
