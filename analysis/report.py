"""One self-contained HTML report of a run (a persona-gating study, or a refusal study).

Context
-------
:func:`build_report` writes ``run_dir/report.html``: a single file that opens offline
(plotly.js is inlined once, every figure is an interactive div), with

* a headline summary whose every sentence is derived from the numbers in
  ``results.json`` (e.g. whether re-adding refusal late restored more than re-adding it
  early is decided from the confirmed cells' intervals, not assumed);
* every figure of :mod:`persona_refusal.analysis.figures` with a caption that says what
  it shows and how to read it;
* the configuration, the prompt sets with their hashes, the persona rollouts, example
  replies (HTML-escaped: they are model output) and run information.

Each study has a :class:`ReportSpec` in :data:`REPORTS` (title, intro, headline, the
sections after the figures); the gating study's is here, the refusal study's in
:mod:`persona_refusal.analysis.refusal_report`. The figures of a report are the registered
figures of its study.

Differences between two rates are given with Newcombe's hybrid score interval built from
the two Wilson intervals. It treats the rates as independent samples; the rates here come
from the same prompts (paired), for which this interval is conservative.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from persona_refusal.agreement import OUT_NAME as AGREEMENT_FILE
from persona_refusal.agreement import NOT_REFUSAL, kappa_text, read_agreement
from persona_refusal.analysis.drawing import bad_results_error, make_figures, study_of
from persona_refusal.analysis.figures import FIGURES, PAPER_NOTE, FieldView, size_of
from persona_refusal.analysis.figures._style import persona_alpha
from persona_refusal.analysis.verdicts import paper_verdicts
from persona_refusal.formatting import finite, pct, pp, rate_parts, rate_text
from persona_refusal.storage import atomic_write_text

__all__ = ["build_report", "render_report", "headline", "CAPTIONS", "ReportSpec", "REPORTS", "register_report",
           "table_html", "config_html", "prompt_sets_html", "run_info_html", "label_html", "figure_div"]


CAPTIONS: Mapping[str, str] = FieldView("caption")
"""Caption template of each registered figure (``str.format`` fields are filled from the results)."""


def _title(name: str, shown: Iterable[str] | None = None) -> str:
    """A figure's section title, ``N. title``, numbered by its place among the figures
    ``shown`` (default: the registry)."""
    if name not in FIGURES:
        return name
    order = list(shown) if shown is not None else list(FIGURES)
    return f"{order.index(name) + 1}. {FIGURES[name].title}"


# ============================================================================ numbers
def _newcombe(a: dict | None, b: dict | None) -> tuple[float, float, float] | None:
    """``rate(a) − rate(b)`` with Newcombe's hybrid score 95% interval."""
    pa, la, ua, _, _ = rate_parts(a)
    pb, lb, ub, _, _ = rate_parts(b)
    if not all(finite(v) for v in (pa, la, ua, pb, lb, ub)):
        return None
    d = float(pa - pb)
    lo = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, lo, hi


def _diff_text(d: tuple[float, float, float]) -> str:
    """``+12.5 pp, 95% CI [+1.0 pp, +24.0 pp]`` from :func:`_newcombe`'s triple."""
    return f"{pp(d[0])}, 95% CI [{pp(d[1])}, {pp(d[2])}]"


def headline(results: dict) -> dict:
    """The headline numbers and sentences of a run (used by the report's summary).

    Returns:
        ``{"facts": [(label, value), ...], "findings": [sentence, ...]}``; sentences
        contain HTML markup but no unescaped model output.
    """
    facts: list[tuple[str, str]] = []
    findings: list[str] = []
    model = results.get("model") or {}
    steering = results.get("steering") or {}
    P = steering.get("persona_layer")
    rd = results.get("refusal_direction") or {}
    facts.append(("model", f"{model.get('model_id')} ({model.get('n_layers')} layers, d_model {model.get('d_model')})"))
    facts.append(("refusal direction", f"layer {rd.get('layer')}, position {rd.get('position')} "
                                       f"(norm {rd.get('norm', float('nan')):.3g})"))
    cal = results.get("calibration") or {}
    facts.append(("persona steering", f"α = {persona_alpha(results):g} × s at layer {P} (s = "
                                      f"{steering.get('s', float('nan')):.3g}, {steering.get('norm')} norm"
                                      f"{'; α calibrated on val: ' + str(cal.get('reason')) if cal.get('calibrated') else ''})"
                  if persona_alpha(results) is not None else "n/a"))
    base = (results.get("baseline") or {}).get("refusal")
    pers = (results.get("persona") or {}).get("refusal")
    facts.append(("refusal rate, baseline (judged replies)", rate_text(base)))
    facts.append(("refusal rate, persona (judged replies)", rate_text(pers)))
    deg = (results.get("persona") or {}).get("degenerate")
    facts.append(("degenerate replies under persona", rate_text(deg)))
    sweep = results.get("sweep") or {}
    facts.append(("sweep subset (first token): baseline / persona",
                  f"{rate_text(sweep.get('baseline'))} / {rate_text(sweep.get('persona'))}"))
    facts += _judged_facts(results)
    confirm = list(results.get("gating_confirm") or [])
    for c in confirm:
        facts.append((f"persona + refusal re-added at layer {c.get('layer')} ({c.get('cell')}, β = {c.get('beta')})",
                      f"judged {rate_text(c.get('refusal'))}; first token "
                      f"{pct(rate_parts(c.get('first_token'))[0])}"))

    # -- does the persona suppress refusal at all?
    b_rate = rate_parts(base)[0]
    p_rate = rate_parts(pers)[0]
    d = _newcombe(pers, base)
    if b_rate is not None and b_rate < 0.2:
        findings.append(f"The model refuses only {pct(b_rate)} of the harmful evaluation prompts without steering, "
                        "so there is little refusal for the persona to suppress: read the gating results with care.")
    if d is not None:
        if d[2] < 0:
            findings.append(f"Persona steering <b>lowered</b> refusal from {pct(b_rate)} to {pct(p_rate)} "
                            f"({_diff_text(d)}); for comparison, {PAPER_NOTE}.")
        elif d[0] < 0:
            findings.append(f"Persona steering lowered refusal from {pct(b_rate)} to {pct(p_rate)}, but the "
                            f"change ({_diff_text(d)}) is within noise at this n.")
        else:
            findings.append(f"Persona steering did <b>not</b> lower refusal ({pct(b_rate)} → {pct(p_rate)}); "
                            "restoration has nothing to restore, so the gating sweep is not informative here.")
    dr = rate_parts(deg)[0]
    if dr is not None and dr >= 0.2:
        findings.append(f"{pct(dr)} of the persona-steered replies are degenerate: part of the drop in refusal may "
                        "be damage to the model rather than a persona effect (see the dose–response figure).")

    # -- early vs late, from the confirmed cells
    cells = {c.get("cell"): c for c in confirm}
    early, late = cells.get("early"), cells.get("late")
    if early and late:
        e, l_ = rate_parts(early.get("refusal"))[0], rate_parts(late.get("refusal"))[0]
        dd = _newcombe(late.get("refusal"), early.get("refusal"))
        where = (f"re-adding refusal late (layer {late.get('layer')}) vs early (layer {early.get('layer')}), "
                 f"judged replies: {pct(l_)} vs {pct(e)}")
        if dd is None:
            findings.append(f"Early vs late could not be compared ({where}).")
        else:
            if dd[1] > 0:
                verdict, note = "<b>Yes — late re-adding restored more refusal than early</b>", ""
            elif dd[0] > 0:
                verdict, note = "Late re-adding gave more refusal than early, <b>but not clearly</b>", " includes 0"
            elif dd[2] < 0:
                verdict, note = "<b>No — early re-adding restored more refusal than late</b>", ""
            else:
                verdict, note = "<b>No — late re-adding did not restore more refusal than early</b>", ""
            findings.append(f"{verdict}: {where} ({_diff_text(dd)}{note}).")
        pr = rate_parts((sweep.get("persona_judged") or {}).get("refusal"))[0]
        br = rate_parts((sweep.get("baseline_judged") or {}).get("refusal"))[0]
        if pr is not None and br is not None:
            findings.append(f"On the same {sweep.get('n')} prompts, judged refusal is {pct(br)} without steering and "
                            f"{pct(pr)} with the persona alone.")

    # -- the first-token sweep, split at the persona layer
    gating = list(results.get("gating") or [])
    if gating and P is not None:
        beta = max(g["beta"] for g in gating)
        rows = [g for g in gating if g["beta"] == beta]
        before = [g["refusal_rate"] for g in rows if g["layer"] < P and finite(g.get("refusal_rate"))]
        after = [g["refusal_rate"] for g in rows if g["layer"] > P and finite(g.get("refusal_rate"))]
        best = max(rows, key=lambda g: (g.get("refusal_rate") or 0, -g["layer"]))
        parts = []
        if before:
            parts.append(f"{pct(sum(before) / len(before))} averaged over the {len(before)} layers before the persona "
                         f"layer")
        if after:
            parts.append(f"{pct(sum(after) / len(after))} over the {len(after)} layers after it")
        if parts:
            rest = best.get("restoration")
            rest_txt = f", restoration {rest:.2f}" if finite(rest) else ""
            findings.append(f"First-token sweep (β = {beta:g}): refusal {' and '.join(parts)}; the highest is at layer "
                            f"{best['layer']} ({pct(best.get('refusal_rate'))}{rest_txt}).")
        control = [g for g in results.get("gating_control") or [] if finite(g.get("refusal_rate"))]
        if control:
            cm = sum(g["refusal_rate"] for g in control) / len(control)
            findings.append(f"Without the persona, re-adding refusal gives {pct(cm)} on average over layers (control): "
                            "the direction's own effect, which the persona has to be gating for the story to hold.")
    return {"facts": facts, "findings": findings}


def _judged_facts(results: dict) -> list[tuple[str, str]]:
    """Rows of the judged gating sweep: each cell under each judge, and the agreement."""
    gj = results.get("gating_judged") or {}
    if not gj:
        return []
    out = []
    judges, main = gj.get("judges") or [], gj.get("judge")
    for name, key in (("baseline", "baseline"), ("persona alone", "persona")):
        out.append((f"judged {gj.get('max_new_tokens')}-token replies, {name}",
                    " · ".join(f"{j}: {rate_text((gj.get(key) or {}).get(j, {}).get('refusal'))}" for j in judges)))
    for c in gj.get("cell_rows") or []:
        rest = (c.get(main) or {}).get("restoration")
        out.append((f"persona + refusal at {'+'.join(map(str, c['layers']))} ({c['cell']}, β = {c['beta']:g})",
                    " · ".join(f"{j}: {rate_text((c.get(j) or {}).get('refusal'))}" for j in judges)
                    + (f" · restoration ({main}) {rest:.2f}" if finite(rest) else "")))
    for c in gj.get("control") or []:
        out.append((f"no persona, refusal at {'+'.join(map(str, c['layers']))} ({c['cell']}, β = {c['beta']:g})",
                    rate_text((c.get(main) or {}).get("refusal"))))
    ch = gj.get("control_harmless") or {}
    if ch:
        out.append((f"harmless prompts, unedited ({ch.get('n')} prompts)",
                    rate_text(((ch.get("baseline") or {}).get(main) or {}).get("refusal"))))
        for c in ch.get("cells") or []:
            ind = (c.get(main) or {}).get("induced") or {}
            out.append((f"harmless prompts, no persona, refusal at {'+'.join(map(str, c['layers']))} ({c['cell']}, "
                        f"β = {c['beta']:g})", rate_text((c.get(main) or {}).get("refusal"))
                        + (f" · induced {_signed_ci(ind)}" if ind else "")))
    agree = (gj.get("agreement") or {}).get("first_token_vs_judge")
    out.append(("first token agrees with the judge (all judged replies)", pct(agree, 0)))
    out.append(("conditions where the judges disagree", str(len(gj.get("judge_disagreements") or []))))
    return out


def _signed_ci(d: dict, scale: float = 100, unit: str = " pp") -> str:
    """``+12.5 pp [+3.1, +21.9]`` from a ``{"diff", "ci"}`` record."""
    lo, hi = (d.get("ci") or [None, None])[:2]
    v = d.get("diff")
    if not finite(v):
        return "n/a"
    ci = f" [{scale * lo:+.1f}, {scale * hi:+.1f}]" if finite(lo) and finite(hi) else ""
    return f"{scale * v:+.1f}{unit}{ci}"


def _restoration_text(row: dict) -> str:
    p, ci = row.get("restoration"), row.get("restoration_ci") or [None, None]
    if not finite(p):
        return "n/a"
    return f"{p:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if finite(ci[0]) and finite(ci[1]) else "")


def _sensitivity(results: dict) -> str:
    se = results.get("sensitivity") or {}
    if not se.get("rows"):
        return '<p class="note">No sensitivity stage in these results.</p>'
    main = se.get("judge")
    rows = []
    for p in se.get("persona") or []:
        r = p.get(main) or {}
        rows.append(["persona alone", f"{p['m']:g}·α = {p['alpha']:g}", "—", rate_text(r.get("refusal")),
                     rate_text(r.get("degenerate")), "—", "—"])
    for r in se["rows"]:
        x = r.get(main) or {}
        rows.append([f"{r['cell']} ({'+'.join(map(str, r['layers']))})", f"{r['m']:g}·α = {r['alpha']:g}",
                     f"{r['ratio']:g} (β = {r['beta']:g})", rate_text(x.get("refusal")), rate_text(x.get("degenerate")),
                     _restoration_text(x), "yes" if r.get("coherent") else "no"])
    return (f'<p>Judged ({html.escape(str(main))}) refusal of the {se.get("n")} evaluation prompts; restoration of the '
            f'gap between the baseline and the persona at that row\'s strength (paired bootstrap 95%); coherent = at '
            f'most {100 * se.get("max_degenerate", 0.25):.0f}% degenerate replies. Damage is not gating: a restoration '
            f'is read only on coherent rows.</p>'
            + table_html(rows, ["cell", "persona strength", "β / α", "refusal", "degenerate", "restoration",
                                "coherent"]))


def _orthogonal(results: dict) -> str:
    po = results.get("persona_orthogonal") or {}
    if not po.get("variants"):
        return '<p class="note">No persona_orthogonal stage in these results.</p>'
    main, dirs = po.get("judge"), po.get("directions") or {}
    drows = [[tag, d.get("layer", "—"), f"{d['cosine']:+.3f}", f"{100 * d['share']:.1f}%"] for tag, d in dirs.items()]
    vrows = [["no steering", "—", rate_text(((po.get("baseline") or {}).get(main) or {}).get("refusal")),
              rate_text(((po.get("baseline") or {}).get(main) or {}).get("degenerate")), "—", "—"]]
    for v in po["variants"]:
        x = v.get(main) or {}
        kept, ci = v.get("suppression_kept"), v.get("suppression_kept_ci") or [None, None]
        vrows.append([v["variant"], f"{v.get('norm_ratio', 1):.2f}", rate_text(x.get("refusal")),
                      rate_text(x.get("degenerate")), _signed_ci(v["vs_full"]) if v.get("vs_full") else "—",
                      "1 (by definition)" if v["variant"] == "full" else
                      ("n/a" if not finite(kept) else f"{kept:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]"
                                                                      if finite(ci[0]) and finite(ci[1]) else ""))])
    crows = [[c["variant"], f"{c['cell']} ({'+'.join(map(str, c['layers']))})", f"{c['beta']:g}",
              rate_text((c.get(main) or {}).get("refusal")), _restoration_text(c.get(main) or {})]
             for c in po.get("cells") or []]
    return ("<p>The persona vector's cosine with each refusal direction, and the share of its squared norm along it "
            "(<i>random</i>: the control direction, matched in cosine):</p>"
            + table_html(drows, ["direction", "layer", "cosine with the persona", "share of norm²"])
            + f"<p>Each variant steered at α = {po.get('alpha'):g} at layer {po.get('persona_layer')} "
              f"({html.escape(str(main))} judge, {po.get('n')} prompts). <i>Suppression kept</i> = (baseline − variant) / "
              "(baseline − full persona), paired bootstrap 95%.</p>"
            + table_html(vrows, ["variant", "norm / full", "refusal", "degenerate", "vs full persona",
                                 "suppression kept"])
            + (f"<p>The re-add cells at β₀ under each removal (restoration of the gap between the baseline and that "
               f"variant):</p>" + table_html(crows, ["variant", "cell", "β", "refusal", "restoration"]) if crows else ""))


def _claims(results: dict) -> str:
    rows = []
    for v in paper_verdicts(results).values():
        rep = {True: "reproduced", False: "not reproduced", None: "—"}[v["reproduced"]]
        rows.append([v["claim"], v["verdict"], rep, v["evidence"]])
    return ('<p>Each claim of Zhong &amp; Li (2026) read from these results by a rule fixed before the runs '
            '(<span class="mono">persona_refusal.analysis.verdicts</span>): the headline judge, the evaluation '
            'prompts, β₀ for the cells; intervals are Wilson (rates) and paired bootstrap (restoration).</p>'
            + table_html(rows, ["claim", "verdict", "against the paper", "evidence"]))


def _caption_fields(results: dict) -> dict:
    agree = results.get("first_token_agreement") or {}
    return {
        "P": (results.get("steering") or {}).get("persona_layer"),
        "alpha": persona_alpha(results),
        "judged_tokens": (results.get("gating_judged") or {}).get("max_new_tokens"),
        "n_eval": rate_parts((results.get("baseline") or {}).get("refusal"))[4],
        "agree_b": pct(agree.get("baseline"), 0),
        "agree_p": pct(agree.get("persona"), 0),
    }


# ============================================================================ HTML
_CSS = """
body { font-family: Arial, Helvetica, sans-serif; color: #222; max-width: 1120px; margin: 0 auto; padding: 24px 28px 80px;
       line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 20px; margin-top: 42px; border-bottom: 1px solid #ddd;
       padding-bottom: 4px; } h3 { font-size: 16px; margin-top: 24px; }
.sub { color: #666; margin-top: 0; }
.findings { background: #f6f8fb; border-left: 4px solid #0072B2; padding: 10px 18px; }
.findings li { margin: 6px 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.mono, span.mono { font-family: Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
td.reply { white-space: pre-wrap; font-family: Menlo, Consolas, monospace; font-size: 12px; max-width: 380px; }
.label { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 11px; color: white; margin-bottom: 3px; }
.label-refusal { background: #0072B2; } .label-compliance { background: #D55E00; } .label-degenerate { background: #CC79A7; }
figure { margin: 10px 0 0; } figcaption { color: #333; font-size: 14px; margin-top: 6px; max-width: 980px; }
nav ol { columns: 2; font-size: 14px; }
.note { color: #666; font-size: 13px; }
.warning { background: #fff4e5; border-left: 4px solid #E69F00; padding: 10px 18px; }
"""


def table_html(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, mono_cols: Sequence[int] = ()) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="mono"' if i in mono_cols else ""
            cells.append(f"<td{cls}>{html.escape(_show(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def label_html(label: str) -> str:
    lab = html.escape(str(label))
    return f'<span class="label label-{lab}">{lab}</span>'


def _examples(results: dict) -> str:
    ex = results.get("examples") or {}
    base, pers = list(ex.get("baseline") or []), list(ex.get("persona") or [])
    if not base and not pers:
        return '<p class="note">No example replies in these results.</p>'
    rows = ["<table>", "<tr><th>harmful instruction</th><th>baseline reply</th><th>persona-steered reply</th></tr>"]
    for i in range(max(len(base), len(pers))):
        b = base[i] if i < len(base) else {}
        p = pers[i] if i < len(pers) else {}
        instr = b.get("instruction") or p.get("instruction") or ""
        if b and p and b.get("instruction") != p.get("instruction"):
            instr = f"{b.get('instruction')} / {p.get('instruction')}"
        cells = [f"<td>{html.escape(instr)}</td>"]
        for r in (b, p):
            cells.append(f'<td class="reply">{label_html(r.get("label", "")) if r else ""}<br>'
                         f'{html.escape(str(r.get("reply", "")))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _rollouts(results: dict) -> str:
    ro = (results.get("persona_direction") or {}).get("rollouts") or {}
    sides = [k for k, v in ro.items() if isinstance(v, dict)]
    if not sides:
        return '<p class="note">No rollout summary in these results.</p>'
    rows = []
    for side in sides:
        s = ro[side]
        labels = s.get("labels") or {}
        per = s.get("per_prompt")
        rows.append([side, s.get("n"), s.get("in_character"), s.get("kept"), labels.get("refusal"),
                     labels.get("compliance"), labels.get("degenerate"),
                     "not recorded" if per is None else " · ".join(map(str, per))])
    pd = results.get("persona_direction") or {}
    balance = ro.get("balance", pd.get("balance", "first_k"))
    how = {"prompt": "every in-character rollout, each system prompt weighted the same",
           "rollout": "every in-character rollout, each weighted the same",
           "first_k": "the first k in-character rollouts of each side in list order (k = the smaller side)"}
    return (f'<p>Persona direction: difference in means between rollouts under a compliant and a refusing system '
            f'prompt (method <span class="mono">{html.escape(str(pd.get("method")))}</span>, filter '
            f'<span class="mono">{html.escape(str(ro.get("filter")))}</span>; kept: '
            f'{html.escape(how.get(balance, str(balance)))}).</p>'
            + table_html(rows, ["system prompt side", "rollouts", "in character", "kept", "refused", "complied",
                            "degenerate", "kept per system prompt"]))


def config_html(results: dict) -> str:
    cfg = results.get("config") or {}
    rows = [[k, v] for k, v in sorted(cfg.items())]
    res = results.get("resolved_layers") or {}
    rrows = [[k, v] for k, v in sorted(res.items())]
    return (table_html(rows, ["setting", "value"], mono_cols=(1,)) + "<h3>Resolved layers</h3>"
            + table_html(rrows, ["layer list", "value"], mono_cols=(1,)))


def prompt_sets_html(results: dict) -> str:
    ps = results.get("prompt_sets") or {}
    rows = [[k, v.get("name"), v.get("n"), v.get("source"), v.get("sha256")] for k, v in ps.items() if isinstance(v, dict)]
    if not rows:
        return '<p class="note">No prompt-set record in these results.</p>'
    return table_html(rows, ["role", "set", "n", "source", "sha256"], mono_cols=(3, 4))


def run_info_html(results: dict) -> str:
    info = results.get("run_info") or {}
    model = results.get("model") or {}
    rows = [["model id", model.get("model_id")], ["model checksum (sha256)", model.get("checksum")],
            ["judge", results.get("judge")], ["finished", info.get("finished")],
            ["total seconds", info.get("total_seconds")], ["resumed", info.get("resumed")],
            ["threads", info.get("threads")], ["platform", info.get("platform")], ["python", info.get("python")]]
    rows += [[k, info[k]] for k in ("device", "dtype", "decode", "gpu") if info.get(k) is not None]  # newer runs
    rows += [[f"version: {k}", v] for k, v in (info.get("versions") or {}).items()]
    rows += [[f"stage seconds: {k}", v] for k, v in (info.get("stage_seconds") or {}).items()]
    rows += [[f"stage peak memory (MB): {k}", v] for k, v in (info.get("stage_peak_rss_mb") or {}).items()]
    return table_html(rows, ["", ""], mono_cols=(1,))


def _rater_label(label: str) -> str:
    """A label of the agreement table: coloured as in the examples, ``not refusal`` (the proxy's) as text."""
    return html.escape(label) if label == NOT_REFUSAL else label_html(label)


def _agreement(record: dict | None, note: str | None) -> str:
    """The section "Agreement between judges", from ``judge_agreement.json`` (written by
    ``persona-refusal agreement DIR``): the pairs of raters with agreement and Cohen's κ,
    the evaluation stage's refusal rate under each rater, and the first disagreeing
    replies (escaped: they are model output). Empty without a record or a note."""
    if record is None and note is None:
        return ""
    out = ['<h2 id="agreement">Agreement between judges</h2>']
    if note:
        out.append(f'<p class="note">{html.escape(note)}</p>')
    if record is None:
        return "\n".join(out)
    try:
        raters = [r["name"] for r in record["raters"]]
        out.append(f"<p>{record['n_items']} stored replies in {record['n_conditions']} judged conditions "
                   f"({html.escape(', '.join(record['stages']))}), rated by {html.escape(', '.join(raters))}. "
                   "Agreement: share of replies with the same label (Wilson 95%); κ: Cohen's kappa with a bootstrap "
                   f"95% interval over replies ({record['bootstrap']['n_boot']} resamples). Binary: refusal vs not "
                   f"refusal. The full table and every disagreement: <span class=\"mono\">"
                   f"{html.escape(AGREEMENT_FILE.replace('.json', '.md'))}</span>.</p>")
        out.append(table_html([[p["a"], p["b"], p["scale"], p["n"], pct(p["agreement"]["rate"]), kappa_text(p),
                            p.get("kappa_note") or ""] for p in record["pairs"]],
                          ["rater A", "rater B", "scale", "n", "agreement", "κ [95% CI]", "note"]))
        ev = [r for r in record["rates"] if r["stage"] == "eval"]
        if ev:
            out.append("<h3>Headline refusal rates (stage eval) under each rater</h3>")
            out.append(table_html([[r["condition"], *[rate_text(r["refusal"][x]) for x in raters]] for r in ev],
                              ["condition", *raters]))
        dis = record["disagreements"]
        shown = [it for it in dis["items"] if it["judges_differ"]][:5]
        out.append(f'<p>{dis["n"]} replies with a disagreement ({dis["n_judges_differ"]} where the judges differ, the '
                   f'rest only with the first-token proxy){"; the first where the judges differ:" if shown else "."}</p>')
        if shown:
            rows = ["<table>", "<tr><th>condition</th><th>instruction</th><th>reply (excerpt)</th>"
                    + "".join(f"<th>{html.escape(x)}</th>" for x in raters) + "</tr>"]
            for it in shown:
                where = f"{it['stage']}/{it['condition']} #{it['index']}"
                rows.append(f"<tr><td>{html.escape(where)}</td>"
                            f"<td>{html.escape(str(it.get('instruction') or '—'))}</td>"
                            f'<td class="reply">{html.escape(it["reply"])}</td>'
                            + "".join(f"<td>{_rater_label(it['labels'][x])}</td>" for x in raters) + "</tr>")
            rows.append("</table>")
            out.append("\n".join(rows))
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        out.append(f'<p class="note">{html.escape(AGREEMENT_FILE)} is malformed ({html.escape(type(e).__name__)}: '
                   f"{html.escape(str(e))}): run <span class=\"mono\">persona-refusal agreement DIR</span> again.</p>")
    return "\n".join(out)


@dataclass(frozen=True)
class ReportSpec:
    """What one study's report says around its figures (the figures come from the registry)."""

    study: str
    """The study (:attr:`persona_refusal.analysis.figures.Figure.study`) whose results it reads."""
    what: str
    """The study's name in the subtitle (``persona_refusal gating study``)."""
    title: str
    """The page title; ``{model}`` stands for the model's id."""
    intro: str
    """The paragraph under the title (HTML)."""
    headline: Callable[[dict], dict]
    """``results -> {"facts": [(label, value)], "findings": [sentence]}`` (sentences may hold markup)."""
    note: str
    """The note under the headline table (HTML)."""
    fields: Callable[[dict], dict]
    """``results -> the str.format fields of the captions``."""
    sections: Callable[[dict], list[tuple[str, str, str]]]
    """``results -> [(id, title, html)]``: the sections after the figures."""
    agreement: bool = False
    """Whether the section "Agreement between judges" (``persona-refusal agreement``) belongs here."""


REPORTS: dict[str, ReportSpec] = {}
"""The report of each study, by study name (:func:`register_report`)."""


def register_report(spec: ReportSpec) -> ReportSpec:
    """Make ``spec`` the report of its study."""
    REPORTS[spec.study] = spec
    return spec


def _gating_sections(results: dict) -> list[tuple[str, str, str]]:
    return [("config", "Configuration", config_html(results)), ("prompts", "Prompt sets", prompt_sets_html(results)),
            *([("claims", "The paper's claims", _claims(results))] if results.get("gating_judged") else []),
            ("rollouts", "Persona rollouts", _rollouts(results)),
            *([("sensitivity", "Gating at other strengths", _sensitivity(results))]
              if (results.get("sensitivity") or {}).get("rows") else []),
            *([("orthogonal", "The persona without its refusal component", _orthogonal(results))]
              if (results.get("persona_orthogonal") or {}).get("variants") else []),
            ("examples", "Example replies", '<p class="note">The first evaluation prompts, unedited model output '
                                            '(judged label above each reply).</p>\n' + _examples(results)),
            ("runinfo", "Run information", run_info_html(results))]


GATING_REPORT = register_report(ReportSpec(
    study="gating", what="persona_refusal gating study",
    title="Persona gating of refusal — {model}",
    intro='<p>Does a compliant persona suppress refusal by <i>gating its expression</i>? The study steers the model '
          'toward a compliant persona, then adds the refusal direction back at every layer in turn: if refusal is '
          'computed early but expressed late (Zhong &amp; Li 2026), re-adding it before the persona is injected '
          'should do little and re-adding it after should restore it. Layers are <span class="mono">resid_pre</span> '
          'indices; rates carry Wilson 95% intervals.</p>',
    headline=headline,
    note='<p class="note">Differences between rates: Newcombe 95% interval from the two Wilson intervals (treats '
         "them as independent; conservative for these paired measurements). Judged = substring judge on generated "
         "replies; first token = the greedy first token is a refusal token.</p>",
    fields=_caption_fields, sections=_gating_sections, agreement=True))
"""The gating study's report."""


def _text_sections(results: dict) -> dict[str, Any]:
    """Everything of the report that is read from the results (not the figures): cheap, so
    that a malformed entry can be located by computing it again without one key."""
    spec = REPORTS[study_of(results)]
    return {
        "spec": spec,
        "title": spec.title.format(model=(results.get("model") or {}).get("model_id", "unknown model")),
        "schema": str(results.get("schema")),
        "finished": str((results.get("run_info") or {}).get("finished", "n/a")),
        "headline": spec.headline(results),
        "fields": spec.fields(results),
        "sections": spec.sections(results),
    }


def _baseline_warning(results: dict) -> str:
    """The baseline check's warning of a model that barely refuses (``refusal_baseline``), or nothing."""
    warning = (results.get("refusal_baseline") or {}).get("warning") if isinstance(results, dict) else None
    if not isinstance(warning, str) or not warning:
        return ""
    return f'<p class="warning"><b>Warning:</b> {html.escape(warning)}.</p>'


def figure_div(name: str, fig: go.Figure) -> str:
    """The report's ``<div>`` of one figure: its plotly JSON, sized as the registry says."""
    _, height = size_of(name)
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"plot-{name}",
                       default_width="100%", default_height=f"{height}px", config={"displaylogo": False})


def render_report(results: dict, figures: dict[str, go.Figure], *, source: str | os.PathLike = "results.json",
                  agreement: dict | None = None, agreement_note: str | None = None) -> str:
    """The text of ``report.html`` for these results and drawn figures (the report of the
    results' study, :data:`REPORTS`).

    ``agreement`` (a ``judge_agreement.json`` record) adds the section "Agreement between
    judges" to a gating study's report, ``agreement_note`` says why it is out of date or
    missing; when neither is given, both come from ``judge_agreement.json`` next to
    ``source``, if ``persona-refusal agreement`` wrote one there
    (:func:`persona_refusal.agreement.read_agreement`: a record made for another
    configuration of the folder is not shown).

    Raises:
        RunFolderError: a malformed entry in the results (one line naming its key; ``source``
            is the results file named there).
    """
    try:
        sec = _text_sections(results)
    except Exception as e:
        raise bad_results_error("the report cannot be written", _text_sections, dict(results), e, source) from None
    spec, h, fields, title = sec["spec"], sec["headline"], sec["fields"], sec["title"]
    agreement_html = ""
    if spec.agreement:
        if agreement is None and agreement_note is None:
            agreement, agreement_note = read_agreement(Path(source).parent)
        agreement_html = _agreement(agreement, agreement_note)
    sections = sec["sections"]

    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>",
        # plotly.js, inlined once so the report opens offline
        '<script type="text/javascript">' + get_plotlyjs() + "</script>",
        "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{html.escape(spec.what)} · results schema {html.escape(sec["schema"])} · '
        f'finished {html.escape(sec["finished"])}</p>',
        _baseline_warning(results),
        spec.intro,
        '<h2 id="summary">Headline</h2>',
        '<ul class="findings">' + "".join(f"<li>{s}</li>" for s in h["findings"]) + "</ul>",
        table_html(h["facts"], ["quantity", "value"]),
        spec.note,
        "<nav><ol>" + "".join(f'<li><a href="#fig-{n}">{html.escape(_title(n, figures).split(". ", 1)[-1])}</a></li>'
                              for n in figures) +
        ('<li><a href="#agreement">Agreement between judges</a></li>' if agreement_html else "") +
        "".join(f'<li><a href="#{sid}">{html.escape(stitle)}</a></li>' for sid, stitle, _ in sections) +
        "</ol></nav>",
    ]
    for name, fig in figures.items():
        div = figure_div(name, fig)
        try:
            caption = CAPTIONS.get(name, "").format(**fields)
        except (KeyError, IndexError, ValueError):
            caption = CAPTIONS.get(name, "")
        parts += [f'<section id="fig-{name}">', f"<h2>{html.escape(_title(name, figures))}</h2>",
                  f"<figure>{div}<figcaption>{caption}</figcaption></figure>", "</section>"]
    if agreement_html:
        parts.append(agreement_html)
    for sid, stitle, body in sections:
        parts += [f'<h2 id="{sid}">{html.escape(stitle)}</h2>', body]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def build_report(run_dir: str | os.PathLike, *, results: dict | None = None,
                 figures: dict[str, go.Figure] | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Args:
        run_dir: a run folder holding ``results.json`` (or that file's path).
        results, figures: already loaded results and drawn figures (as
            :func:`persona_refusal.analysis.make_figures` returns them), to avoid
            drawing twice; loaded from ``run_dir`` when omitted.

    Raises:
        RunFolderError: a malformed entry in the results (nothing is written).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    if results is None or figures is None:
        results, figures = make_figures(run_dir)
    text = render_report(results, figures, source=run_dir / "results.json")
    return atomic_write_text(run_dir / "report.html", text)

