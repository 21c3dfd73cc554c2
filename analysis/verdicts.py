"""The paper's claims read from a run's results, one verdict each, by rules fixed in advance.

Context
-------
Zhong & Li (2026) make five claims that a run of the ``paper`` preset can test. Each
verdict here is computed from ``results.json`` by the rule written down before the runs
(``docs/results/paper-protocol-2.md``), so a report, a table and the docs all say the same
thing and none of them is read off a plot by eye. The headline judge's labels are used,
on the evaluation prompts, at the calibrated α; β₀ = 0.8·α is the primary re-add strength.

1. ``persona_suppresses``: the persona's refusal interval lies below the baseline's.
2. ``early_does_not_restore``: on every *coherent* early row (degenerate share at most the
   calibration's bar) — β₀ in the judged sweep and the small-β rows of ``sensitivity`` —
   the restoration interval does not lie above 0. No coherent early row: not testable.
3. ``late_restores`` / ``paired_restores``: the cell's restoration interval at β₀ lies
   above 0. (Restoration needs a gap: where the persona does not lower refusal, claims
   2 and 3 are not testable.)
4. ``readd_refuses_benign``: per cell, the refusal induced on harmless prompts at β₀
   (``gating_judged.control_harmless``) has an interval above 0.
5. ``refusal_component_suppresses``: *yes* if the persona minus its injection-layer
   refusal component keeps less than half of the full persona's suppression (upper bound
   < 0.5) while the matched random removal keeps more than half (lower bound > 0.5);
   *no* if the ``minus:injection`` variant keeps more than half (lower bound > 0.5);
   *unclear* otherwise.

Each verdict is a dict: ``verdict`` (``"yes"``, ``"no"``, ``"unclear"`` or
``"not measured"``/``"not testable"``), ``reproduced`` (whether it agrees with the paper,
``None`` where the paper makes no claim or nothing was measured) and ``evidence`` (one
line with the numbers).
"""

from __future__ import annotations

from typing import Mapping

from persona_refusal.formatting import finite

__all__ = ["paper_verdicts", "PAPER_CLAIMS"]

PAPER_CLAIMS = {
    "persona_suppresses": ("compliant persona suppresses refusal", "yes"),
    "early_does_not_restore": ("early re-add does not restore refusal", "yes"),
    "late_restores": ("late re-add restores refusal (partly)", "yes"),
    "paired_restores": ("paired late re-add restores refusal (partly)", "yes"),
    "readd_refuses_benign": ("the re-added direction refuses harmless prompts on its own", "yes"),
    "refusal_component_suppresses": ("the persona suppresses through its own refusal component", None),
}
"""Claim key → (what it says, the paper's answer; ``None``: the paper does not test it)."""


def _ci(rec: Mapping | None) -> tuple[float | None, float | None]:
    ci = (rec or {}).get("ci") or [None, None]
    return ci[0], ci[1]


def _rest(row: Mapping, judge: str) -> tuple[float | None, float | None, float | None]:
    r = row.get(judge) or {}
    ci = r.get("restoration_ci") or [None, None]
    return r.get("restoration"), ci[0], ci[1]


def _fmt_rest(p, lo, hi) -> str:
    if not finite(p):
        return "n/a"
    return f"{p:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if finite(lo) and finite(hi) else "")


def _rate(rec: Mapping | None) -> str:
    if not rec or not rec.get("n"):
        return "n/a"
    lo, hi = _ci(rec)
    return f"{100 * rec['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({rec['k']}/{rec['n']})"


def _verdict(verdict: str, claim: str, evidence: str) -> dict:
    paper = PAPER_CLAIMS[claim][1]
    measured = verdict in ("yes", "no")
    return {"claim": PAPER_CLAIMS[claim][0], "verdict": verdict, "evidence": evidence,
            "reproduced": (verdict == paper) if (measured and paper is not None) else None}


def paper_verdicts(results: Mapping) -> dict[str, dict]:
    """Every claim's verdict from one run's results (see the module docstring for the rules).

    Example:
        >>> paper_verdicts({})["persona_suppresses"]["verdict"]
        'not measured'
    """
    gj = results.get("gating_judged") or {}
    main = gj.get("judge")
    out: dict[str, dict] = {}
    if not gj:
        return {k: _verdict("not measured", k, "no judged gating sweep in these results") for k in PAPER_CLAIMS}
    b0 = gj.get("beta0")
    base = (gj.get("baseline") or {}).get(main, {}).get("refusal")
    pers = (gj.get("persona") or {}).get(main, {}).get("refusal")
    blo, _ = _ci(base)
    _, phi = _ci(pers)
    ok = finite(blo) and finite(phi) and phi < blo
    out["persona_suppresses"] = _verdict("yes" if ok else "no", "persona_suppresses",
                                         f"baseline {_rate(base)} → persona {_rate(pers)}")
    max_deg = ((results.get("sensitivity") or {}).get("max_degenerate")
               or (results.get("calibration") or {}).get("rule", {}).get("max_degenerate") or 0.25)
    cells = {c["cell"]: c for c in gj.get("cell_rows") or [] if c["beta"] == b0}

    def coherent(row: Mapping) -> bool:
        deg = (row.get(main) or {}).get("degenerate") or {}
        return deg.get("rate") is not None and deg["rate"] <= max_deg

    early_rows = [("β₀", cells["early"])] if "early" in cells else []
    early_rows += [(f"β/α {r['ratio']:g}", r) for r in (results.get("sensitivity") or {}).get("rows") or []
                   if r["cell"] == "early" and r.get("small_beta")]
    readable = [(name, r) for name, r in early_rows if coherent(r) and finite(_rest(r, main)[0])]
    if not early_rows:
        out["early_does_not_restore"] = _verdict("not measured", "early_does_not_restore", "no early cell")
    elif not readable:
        out["early_does_not_restore"] = _verdict(
            "not testable", "early_does_not_restore",
            f"no early row is readable: each has more than {100 * max_deg:.0f}% degenerate replies, or no "
            f"baseline-persona gap to restore ("
            + "; ".join(f"{name}: degenerate {_rate((r.get(main) or {}).get('degenerate'))}" for name, r in early_rows)
            + ")")
    else:
        restores = [name for name, r in readable if finite(_rest(r, main)[1]) and _rest(r, main)[1] > 0]
        out["early_does_not_restore"] = _verdict(
            "no" if restores else "yes", "early_does_not_restore",
            "; ".join(f"{name}: restoration {_fmt_rest(*_rest(r, main))}" for name, r in readable)
            + f" ({len(readable)} of {len(early_rows)} early rows coherent)")
    for cell, key in (("late", "late_restores"), ("paired", "paired_restores")):
        c = cells.get(cell)
        if c is None:
            out[key] = _verdict("not measured", key, f"no {cell} cell")
            continue
        p, lo, hi = _rest(c, main)
        deg = (c.get(main) or {}).get("degenerate") or {}
        verdict = "not testable" if not finite(p) else "yes" if finite(lo) and lo > 0 else "no"
        out[key] = _verdict(verdict, key,
                            f"{_rate((c.get(main) or {}).get('refusal'))}, restoration {_fmt_rest(p, lo, hi)}, "
                            f"degenerate {_rate(deg)}")
    ch = gj.get("control_harmless") or {}
    hc = {c["cell"]: c for c in ch.get("cells") or [] if c["beta"] == b0}
    if not hc:
        out["readd_refuses_benign"] = _verdict("not measured", "readd_refuses_benign", "no benign control")
    else:
        per = {}
        for cell, c in hc.items():
            ind = (c.get(main) or {}).get("induced") or {}
            lo = (ind.get("ci") or [None])[0]
            per[cell] = (finite(lo) and lo > 0, ind)
        ev = "; ".join(f"{cell}: {_rate((hc[cell].get(main) or {}).get('refusal'))}, induced "
                       f"{100 * ind.get('diff', 0):+.0f} pp" for cell, (_, ind) in per.items())
        yes = [cell for cell, (y, _) in per.items() if y]
        verdict = "yes" if len(yes) == len(per) else "no" if not yes else "unclear"
        out["readd_refuses_benign"] = _verdict(verdict, "readd_refuses_benign",
                                               ev + (f" (yes at: {', '.join(yes)})" if yes and verdict != "yes" else ""))
    po = {v["variant"]: v for v in (results.get("persona_orthogonal") or {}).get("variants") or []}
    if "minus:injection" not in po:
        out["refusal_component_suppresses"] = _verdict("not measured", "refusal_component_suppresses",
                                                       "no persona_orthogonal stage")
    else:
        def kept(v):
            ci = v.get("suppression_kept_ci") or [None, None]
            return v.get("suppression_kept"), ci[0], ci[1]

        inj, rnd = kept(po["minus:injection"]), kept(po.get("minus:random") or {})
        if finite(inj[2]) and inj[2] < 0.5 and finite(rnd[1]) and rnd[1] > 0.5:
            verdict = "yes"
        elif finite(inj[1]) and inj[1] > 0.5:
            verdict = "no"
        else:
            verdict = "unclear"
        ev = (f"suppression kept without the injection layer's refusal component {_fmt_rest(*inj)}, "
              f"without a matched random component {_fmt_rest(*rnd)}")
        if "minus:study" in po:
            ev += f", without the study direction's component {_fmt_rest(*kept(po['minus:study']))}"
        out["refusal_component_suppresses"] = _verdict(verdict, "refusal_component_suppresses", ev)
    return out
