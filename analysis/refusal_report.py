"""The report of a refusal study (``persona-refusal refusal``): headline, tables, sections.

Context
-------
Registered in :data:`persona_refusal.analysis.report.REPORTS` under ``"refusal"``: the
figures come from the figure registry (``front``, ``edits``); this module says what the
page writes around them. Every sentence of the headline is derived from the numbers in
``results.json``: whether the goal (judged harmful refusal ≤ 10% at KL ≤ 0.2 nats, with
no rise in degenerate replies) is met on the val front and on the test split, and which of
Marshall et al.'s claims about affine concept editing hold on this model, each decided
from a paired bootstrap interval — never assumed.
"""

from __future__ import annotations

import html
from typing import Any

from persona_refusal.analysis.figures.edits import EDIT_NAMES
from persona_refusal.analysis.figures.front import GOAL_REFUSAL
from persona_refusal.analysis.report import (ReportSpec, config_html, label_html, prompt_sets_html, register_report,
                                             run_info_html, table_html)
from persona_refusal.formatting import finite, fmt, pct, rate_text

__all__ = ["refusal_headline", "GOAL_KL", "REFUSAL_REPORT"]

GOAL_KL = 0.2
"""The refusal study's goal for the KL an edit may cost on harmless prompts (nats)."""


def _name(edit: str) -> str:
    return EDIT_NAMES.get(edit, f"ablation of the {edit[5:]} candidate (another rule's choice)")


def _diff(ed: dict, s: str, measure: str, a: str, b: str) -> dict | None:
    return next((d for d in ed.get("differences") or [] if d["set"] == s and d["measure"] == measure
                 and d["a"] == a and d["b"] == b), None)


def _diff_text(d: dict | None, percent: bool = True) -> str:
    if d is None or not finite(d.get("diff")):
        return "n/a"
    lo, hi = d.get("ci") or [None, None]
    if percent:
        return f"{100 * d['diff']:+.1f} pp [{fmt(None if lo is None else 100 * lo, '+.1f')}, " \
               f"{fmt(None if hi is None else 100 * hi, '+.1f')}]"
    return f"{d['diff']:+.3g} [{fmt(lo, '+.3g')}, {fmt(hi, '+.3g')}]"


def _sign(d: dict | None) -> int | None:
    """+1 / −1 when the interval excludes 0 above / below, 0 when it includes it, None without one."""
    if d is None or not d.get("ci") or not all(finite(v) for v in d["ci"]):
        return None
    lo, hi = d["ci"]
    return 1 if lo > 0 else (-1 if hi < 0 else 0)


def _cond(ed: dict, s: str, e: str) -> dict | None:
    return next((c for c in ed.get("conditions") or [] if c["set"] == s and c["edit"] == e), None)


def _rate(rec: dict | None, key: str) -> float | None:
    r = (rec or {}).get(key) or {}
    return r.get("rate") if finite(r.get("rate")) else None


def _no_refusal(results: dict) -> bool:
    """Whether the baseline check found a model that barely refuses (no goal can be met then:
    there was no refusal to remove)."""
    return bool((results.get("refusal_baseline") or {}).get("low_refusal"))


_NOT_APPLICABLE = "goal not applicable: the unedited model barely refuses (see the warning above)"


def _val_goal(results: dict) -> str | None:
    """The goal on the val front: which judged candidates meet it, or what the front costs."""
    front = results.get("front") or {}
    base = ((front.get("baseline") or {}).get("judged") or {})
    d0 = _rate(base, "degenerate")
    judged = [c for c in front.get("candidates") or [] if c.get("kind") == "single" and c.get("refusal")
              and finite(c.get("kl"))]
    if not judged:
        return None

    def desc(c: dict) -> str:
        return (f"layer {c['layer']}, position {c['position']}: judged refusal {rate_text(c['refusal'])}, KL "
                f"{c['kl']:.3g} nats, degenerate {pct(_rate(c, 'degenerate'), 0)}")

    meets = [c for c in judged if c["refusal"]["rate"] <= GOAL_REFUSAL and c["kl"] <= GOAL_KL
             and (d0 is None or (_rate(c, "degenerate") or 0) <= d0)]
    head = (f"<b>Val front</b> ({len(judged)} judged candidates, {front.get('n_front')} harmful val prompts; unedited "
            f"{rate_text(base.get('refusal'))}, degenerate {pct(d0, 0)}): ")
    if _no_refusal(results):
        return head + _NOT_APPLICABLE + "."
    if meets:
        best = min(meets, key=lambda c: (c["refusal"]["rate"], c["kl"]))
        return head + (f"{len(meets)} meet the goal (judged refusal ≤ {GOAL_REFUSAL:.0%}, KL ≤ {GOAL_KL:g}, no more "
                       f"degenerate replies than unedited); the best is {desc(best)}.")
    within = [c for c in judged if c["kl"] <= GOAL_KL]
    low = [c for c in judged if c["refusal"]["rate"] <= GOAL_REFUSAL]
    text = head + "<b>no single direction meets the goal</b>. "
    if within:
        text += f"Within KL ≤ {GOAL_KL:g} the lowest judged refusal is {desc(min(within, key=lambda c: c['refusal']['rate']))}. "
    if low:
        text += f"Reaching ≤ {GOAL_REFUSAL:.0%} costs at least KL {min(c['kl'] for c in low):.3g} nats " \
                f"({desc(min(low, key=lambda c: c['kl']))})."
    else:
        text += f"No judged candidate reaches ≤ {GOAL_REFUSAL:.0%}: the lowest is " \
                f"{desc(min(judged, key=lambda c: (c['refusal']['rate'], c['kl'])))}."
    return text


def _test_goal(ed: dict, no_refusal: bool = False) -> list[str]:
    """The goal on the test split, for each erasing edit of the chosen direction (not applicable
    when the baseline check found no refusal to remove)."""
    out = []
    kl = ed.get("kl") or {}
    for e in ("ablate", "ablate_layers", "ace0", "ace0_layers"):
        c = _cond(ed, "harmful", e)
        k = (kl.get(e) or {}).get("mean")
        if c is None or not finite(k):
            continue
        deg = _diff(ed, "harmful", "degenerate", e, "none")
        rise = _sign(deg)
        met = c["refusal"]["rate"] <= GOAL_REFUSAL and k <= GOAL_KL and rise in (0, -1)
        out.append(f"{_name(e)}: judged refusal {rate_text(c['refusal'])}, KL {k:.3g} nats, degenerate "
                   f"{rate_text(c['degenerate'])} (vs unedited {_diff_text(deg)}) — "
                   + (_NOT_APPLICABLE if no_refusal else f"goal {'<b>met</b>' if met else 'not met'}"))
    return out


def _claims(ed: dict) -> list[str]:
    """Marshall et al.'s claims, each decided from a paired interval (test split)."""
    out = []
    d = _diff(ed, "harmful", "refusal", "ace0", "ablate")
    s = _sign(d)
    if s is not None:
        verdict = {-1: "<b>holds</b>: ACE α = 0 removes more refusal than directional ablation",
                   0: "<b>not distinguishable</b> at this n: the interval includes 0",
                   1: "<b>does not hold</b>: directional ablation removes more refusal than ACE α = 0"}[s]
        out.append(f"<i>ACE erases refusal at least as reliably as ablation</i> (harmful prompts): {verdict} "
                   f"(ACE − ablation {_diff_text(d)}; per-layer ACE − ablation "
                   f"{_diff_text(_diff(ed, 'harmful', 'refusal', 'ace0_layers', 'ablate'))}).")
    d1 = _diff(ed, "harmless", "refusal", "ace1", "none")
    s1 = _sign(d1)
    if s1 is not None:
        verdict = {1: "<b>holds</b>", 0: "<b>not shown</b> at this n: the interval includes 0",
                   -1: "<b>does not hold</b>: it lowers refusal"}[s1]
        out.append(f"<i>ACE α = 1 induces refusal on harmless prompts</i>: {verdict} (ACE − unedited {_diff_text(d1)}; "
                   f"ACE − addition {_diff_text(_diff(ed, 'harmless', 'refusal', 'ace1', 'add'))}).")
    ab = _cond(ed, "harmful", "ablate")
    if ab is not None:
        lo = (ab["refusal"].get("ci") or [0, 0])[0]
        if finite(lo) and lo > GOAL_REFUSAL:
            verdict = ("<b>holds</b> here: ACE α = 0 removes more" if s == -1 else
                       "<b>does not hold</b> here: ACE α = 0 does not remove more")
            out.append(f"<i>ACE works where directional ablation alone fails</i>: ablation leaves "
                       f"{rate_text(ab['refusal'])} (above {GOAL_REFUSAL:.0%}); the claim {verdict} "
                       f"(ACE − ablation {_diff_text(d)}).")
        else:
            out.append(f"<i>ACE works where directional ablation alone fails</i>: not testable on this model — ablation "
                       f"does not clearly fail (judged refusal {rate_text(ab['refusal'])}).")
    parts = []
    for e in ("ablate", "ace0", "add", "ace1"):
        dd = _diff(ed, "borderline", "refusal", e, "none")
        if dd is not None:
            parts.append(f"{_name(e)} {_diff_text(dd)}")
    base = _cond(ed, "borderline", "none")
    if parts and base is not None:
        out.append(f"<i>Across prompt types</i>: borderline prompts are refused {rate_text(base['refusal'])} unedited; "
                   f"change under each edit: " + "; ".join(parts) + f". ACE α = 0 − ablation on them: "
                   f"{_diff_text(_diff(ed, 'borderline', 'refusal', 'ace0', 'ablate'))}; ACE α = 1 − addition: "
                   f"{_diff_text(_diff(ed, 'borderline', 'refusal', 'ace1', 'add'))}.")
    dk = _diff(ed, "harmless", "kl", "ace0", "ablate")
    if dk is not None:
        out.append(f"KL on harmless prompts, ACE α = 0 − ablation: {_diff_text(dk, percent=False)} nats; "
                   f"each layer's own direction − one direction (ablation): "
                   f"{_diff_text(_diff(ed, 'harmless', 'kl', 'ablate_layers', 'ablate'), percent=False)} nats.")
    return out


def refusal_headline(results: dict) -> dict:
    """The headline facts and sentences of a refusal study.

    Returns:
        ``{"facts": [(label, value), ...], "findings": [sentence, ...]}``; sentences hold
        HTML markup but no model output.
    """
    model = results.get("model") or {}
    rd = results.get("refusal_direction") or {}
    sel = results.get("selection") or {}
    front = results.get("front") or {}
    add = results.get("addition") or {}
    ed = results.get("edits") or {}
    facts: list[tuple[str, str]] = [
        ("model", f"{model.get('model_id')} ({model.get('n_layers')} layers, d_model {model.get('d_model')})"),
        ("refusal direction", f"layer {rd.get('layer')}, position {rd.get('position')} (norm {fmt(rd.get('norm'))}); "
                              f"chosen by the {rd.get('rule')} rule on val: {rd.get('reason')}"),
    ]
    for rule, ch in (sel.get("rules") or {}).items():
        facts.append((f"rule {rule}", f"layer {ch.get('layer')}, position {ch.get('position')}" if ch.get("key")
                      else f"nothing chosen ({ch.get('reason')})"))
    if front:
        cands = [c for c in front.get("candidates") or [] if c.get("kind") == "single"]
        facts.append(("front (val)", f"{len(cands)} candidates on {front.get('n_val')} + {front.get('n_val')} prompts; "
                                     f"{len(front.get('judged_keys') or [])} judged on {front.get('n_front')} harmful "
                                     f"prompts ({front.get('max_new_tokens')}-token replies)"))
    if add:
        facts.append(("addition strength (val)", f"c = {fmt(add.get('coeff'))} at layer {add.get('layer')} "
                                                 f"({'threshold met' if add.get('threshold_met') else 'threshold not met: the highest'})"))
    for c in ed.get("conditions") or []:
        k = (ed.get("kl") or {}).get(c["edit"]) or {}
        facts.append((f"test {c['set']}: {_name(c['edit'])}",
                      f"refusal {rate_text(c['refusal'])}; degenerate {rate_text(c['degenerate'])}"
                      + (f"; KL {k['mean']:.3g} [{fmt(k['ci'][0], '.3g')}, {fmt(k['ci'][1], '.3g')}]"
                         if finite(k.get("mean")) else "")))
    findings = []
    val = _val_goal(results)
    if val:
        findings.append(val)
    test = _test_goal(ed, _no_refusal(results))
    if test:
        findings.append("<b>Test split</b>, the chosen direction: " + "; ".join(test) + ".")
    findings += _claims(ed)
    return {"facts": facts, "findings": findings}


def _test_table(ed: dict) -> str:
    kl = ed.get("kl") or {}
    rows = []
    for c in ed.get("conditions") or []:
        k = kl.get(c["edit"]) or {}
        rows.append([c["set"], _name(c["edit"]), rate_text(c["refusal"]), rate_text(c["compliance"]),
                     rate_text(c["degenerate"]), pct((c.get("first_token") or {}).get("refusal_rate"), 0),
                     "—" if not finite(k.get("mean")) else f"{k['mean']:.3g} [{fmt(k['ci'][0], '.3g')}, "
                                                           f"{fmt(k['ci'][1], '.3g')}]"])
    return table_html(rows, ["prompts", "edit", "judged refusal", "compliance", "degenerate", "first token refusal",
                             "KL on harmless (nats)"])


def _differences(ed: dict) -> str:
    rows = [[d["set"], d["measure"], f"{_name(d['a'])} − {_name(d['b'])}",
             _diff_text(d, percent=d["measure"] != "kl"), d.get("n")] for d in ed.get("differences") or []]
    return ('<p class="note">Paired bootstrap 95% intervals over prompts (the two edits answered the same prompts): '
            'refusal and degenerate in percentage points, KL in nats.</p>'
            + table_html(rows, ["prompts", "measure", "a − b", "difference [95% CI]", "n"]))


def _rules(results: dict) -> str:
    sel = results.get("selection") or {}
    rows_by_key = {c["key"]: c for c in (results.get("front") or {}).get("candidates") or []}
    rows = []
    for rule, ch in (sel.get("rules") or {}).items():
        c = rows_by_key.get(ch.get("key")) or {}
        rows.append([rule + (" (used)" if rule == sel.get("used") else ""), ch.get("key") or "—",
                     fmt(c.get("bypass"), ".3g"), fmt(c.get("kl"), ".3g"), fmt(c.get("induce"), ".3g"),
                     rate_text(c.get("refusal")) if c.get("refusal") else "not judged", ch.get("reason"),
                     ch.get("fallback_used") or ""])
    return (f'<p>Every rule applied to the val front; settings: <span class="mono">'
            f'{html.escape(str(sel.get("settings")))}</span>.</p>'
            + table_html(rows, ["rule", "candidate", "bypass (first token)", "KL", "induce", "judged refusal", "why",
                                "fallback"]))


def _calibration(results: dict) -> str:
    add = results.get("addition") or {}
    rows = [[r["coeff"], fmt(r["harmless"]["score_mean"], ".3g"), pct(r["harmless"]["refusal_rate"], 0),
             pct(r["borderline"]["refusal_rate"], 0)] for r in add.get("rows") or []]
    return (f"<p>{html.escape(str(add.get('rule')))} (val split: {add.get('n_harmless')} harmless, "
            f"{add.get('n_borderline')} borderline prompts). Chosen: c = {fmt(add.get('coeff'))}.</p>"
            + table_html(rows, ["c", "harmless: mean refusal log-odds", "harmless: first-token refusal",
                                "borderline: first-token refusal"]))


def _checks(ed: dict) -> str:
    ch = ed.get("checks") or {}
    rows = [[k, fmt(v, ".3g")] for k, v in ch.items() if k.endswith("_max_error") or k == "scale"]
    return (f"<p>At layer {ch.get('layer')}, on {ch.get('n_prompts')} test prompts (every position): the largest "
            "distance of each edit's projection on r̂ from its target (ablation: 0; ACE α = 0: μ·r̂; ACE α = 1: "
            "μ·r̂ + |r|), against the typical |x·r̂| before editing.</p>" + table_html(rows, ["check", "value"]))


def _examples(results: dict) -> str:
    ex = results.get("examples") or {}
    if not ex:
        return '<p class="note">No example replies in these results.</p>'
    rows = ["<table>", "<tr><th>prompts / edit</th><th>instruction</th><th>reply</th></tr>"]
    for key, items in ex.items():
        s, _, e = key.partition("/")
        for it in items[:1]:
            rows.append(f"<tr><td>{html.escape(s)} / {html.escape(_name(e))}</td>"
                        f"<td>{html.escape(str(it.get('instruction')))}</td>"
                        f'<td class="reply">{label_html(it.get("label", ""))}<br>{html.escape(str(it.get("reply")))}'
                        f"</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _sections(results: dict) -> list[tuple[str, str, str]]:
    ed = results.get("edits") or {}
    return [("test", "The test split, edit by edit", _test_table(ed)),
            ("differences", "Differences between edits", _differences(ed)),
            ("rules", "Selection rules (val)", _rules(results)),
            ("calibration", "Addition strength (val)", _calibration(results)),
            ("checks", "Edit checks", _checks(ed)),
            ("examples", "Example replies", '<p class="note">The first test prompt of each set under each edit '
                                            "(model output; judged label above each reply).</p>\n" + _examples(results)),
            ("config", "Configuration", config_html(results)), ("prompts", "Prompt sets", prompt_sets_html(results)),
            ("runinfo", "Run information", run_info_html(results))]


def _fields(results: dict) -> dict[str, Any]:
    return {}


REFUSAL_REPORT = register_report(ReportSpec(
    study="refusal", what="persona_refusal refusal study",
    title="Refusal directions at their best — {model}",
    intro="<p>How much refusal can one direction remove, and at what cost? Every diff-in-means candidate is ablated on "
          "the val split and placed on a refusal-vs-KL front; named rules choose one (val only). On the test split the "
          "chosen direction is ablated, edited affinely (ACE, Marshall et al.: the projection set to the harmless "
          "reference, α = 0, or to the harmful level, α = 1) and added, on harmful, harmless and borderline prompts. "
          'Layers are <span class="mono">resid_pre</span> indices; rates carry Wilson 95% intervals, KL bootstrap '
          "intervals, differences between edits paired bootstrap intervals.</p>",
    headline=refusal_headline,
    note=f'<p class="note">The goal: judged harmful refusal ≤ {GOAL_REFUSAL:.0%} at KL ≤ {GOAL_KL:g} nats with no rise '
         "in degenerate replies. Judged = the headline phrase judge on generated replies; first token = the greedy "
         "first token is a refusal token.</p>",
    fields=_fields, sections=_sections))
"""The refusal study's report."""
