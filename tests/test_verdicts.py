"""persona_refusal.analysis.verdicts: each claim's rule on hand-made results, and on the committed runs."""

from __future__ import annotations

import json
from pathlib import Path

from persona_refusal.analysis.verdicts import PAPER_CLAIMS, paper_verdicts

ROOT = Path(__file__).resolve().parents[1]


def _rate(k: int, n: int = 64) -> dict:
    from persona_refusal.ops import wilson_interval

    return {"k": k, "n": n, "rate": k / n, "ci": list(wilson_interval(k, n))}


def _row(k: int, deg: int = 0, rest=None, ci=(None, None), **extra) -> dict:
    return {"lenient": {"refusal": _rate(k), "degenerate": _rate(deg), "restoration": rest, "restoration_ci": list(ci),
                        **extra}}


def _results(early=(2, 0, 0.0, (-0.1, 0.1)), late=(30, 0, 0.5, (0.3, 0.7)), paired=(5, 0, 0.05, (-0.05, 0.15)),
             harmless=None, variants=None, small_early=()) -> dict:
    cells = [{"cell": name, "layers": [1], "beta": 3.2, **_row(*spec)}
             for name, spec in (("early", early), ("late", late), ("paired", paired))]
    gj = {"judge": "lenient", "beta0": 3.2, "baseline": _row(51), "persona": _row(3), "cell_rows": cells}
    if harmless is not None:
        gj["control_harmless"] = {"cells": [{"cell": name, "beta": 3.2, "lenient": {
            "refusal": _rate(k, 32), "induced": {"diff": k / 32, "ci": [lo, hi], "n": 32}}}
            for name, (k, lo, hi) in harmless.items()]}
    out = {"gating_judged": gj, "sensitivity": {"max_degenerate": 0.25, "rows": [
        {"cell": "early", "small_beta": True, "ratio": r, **_row(*spec)} for r, spec in small_early]}}
    if variants is not None:
        out["persona_orthogonal"] = {"variants": [{"variant": name, "suppression_kept": p, "suppression_kept_ci": [lo, hi]}
                                                  for name, (p, lo, hi) in variants.items()]}
    return out


def test_every_claim_has_a_verdict_and_nothing_measured_says_so():
    v = paper_verdicts({})
    assert set(v) == set(PAPER_CLAIMS) and all(x["verdict"] == "not measured" for x in v.values())
    assert all(x["reproduced"] is None for x in v.values())


def test_rules_on_hand_made_results():
    v = paper_verdicts(_results(harmless={"early": (20, 0.4, 0.8), "late": (0, 0.0, 0.0), "paired": (9, 0.1, 0.4)},
                                variants={"minus:injection": (0.1, -0.1, 0.3), "minus:random": (0.95, 0.8, 1.05)}))
    assert v["persona_suppresses"]["verdict"] == "yes" and v["persona_suppresses"]["reproduced"]
    assert v["early_does_not_restore"]["verdict"] == "yes"
    assert v["late_restores"]["verdict"] == "yes" and v["late_restores"]["reproduced"]
    assert v["paired_restores"]["verdict"] == "no" and v["paired_restores"]["reproduced"] is False
    assert v["readd_refuses_benign"]["verdict"] == "unclear"  # two cells of three
    assert v["refusal_component_suppresses"]["verdict"] == "yes"
    assert v["refusal_component_suppresses"]["reproduced"] is None  # the paper makes no such claim


def test_damage_is_not_gating():
    """A broken early re-add tells nothing; a coherent small-β early row that restores refutes it."""
    broken = paper_verdicts(_results(early=(0, 60, -0.06, (-0.1, 0.0))))
    assert broken["early_does_not_restore"]["verdict"] == "not testable"
    small = paper_verdicts(_results(early=(0, 60, -0.06, (-0.1, 0.0)), small_early=[(0.1, (20, 2, 0.35, (0.2, 0.5)))]))
    assert small["early_does_not_restore"]["verdict"] == "no"


def test_refusal_component_no_and_unclear():
    no = paper_verdicts(_results(variants={"minus:injection": (0.9, 0.7, 1.0), "minus:random": (1.0, 0.9, 1.1)}))
    assert no["refusal_component_suppresses"]["verdict"] == "no"
    unclear = paper_verdicts(_results(variants={"minus:injection": (0.4, 0.1, 0.7), "minus:random": (1.0, 0.9, 1.1)}))
    assert unclear["refusal_component_suppresses"]["verdict"] == "unclear"


def test_committed_first_protocol_runs():
    one = paper_verdicts(json.loads((ROOT / "figures/demo-1.5b/paper/results.json").read_text()))
    assert one["persona_suppresses"]["reproduced"] and one["late_restores"]["verdict"] == "no"
    assert one["early_does_not_restore"]["verdict"] == "not testable"  # 22/64 degenerate at β₀
    assert one["readd_refuses_benign"]["verdict"] == "not measured"
