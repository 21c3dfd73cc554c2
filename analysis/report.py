"""One self-contained HTML report of a persona-gating run.

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
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from persona_refusal.analysis.figures import FIGURE_SIZES, PAPER_NOTE

__all__ = ["build_report", "headline", "CAPTIONS"]

_TITLES = {
    "gating": "1. Where re-adding refusal works: the gating sweep",
    "outcomes": "2. Baseline vs compliant persona",
    "alpha": "3. Persona strength: dose–response and coherence",
    "heatmap": "4. Persona layer × re-add layer",
    "projections": "5. Computed vs expressed",
    "knockout": "6. Persona-direction knockout",
    "patching": "7. Activation patching",
    "cosine": "8. Persona direction vs refusal direction",
    "selection": "9. How the refusal direction was selected",
}

CAPTIONS = {
    "gating": (
        "With the compliant persona steered in at layer {P}, the refusal direction is added back at one layer at a "
        "time (x axis); the purple line is the share of harmful prompts whose first reply token is a refusal token, "
        "the dashed grey line the same re-add without the persona, and the dotted lines the baseline and persona-only "
        "levels. If the persona gates refusal at the expression stage, re-adding it in the shaded <i>early</i> region "
        "(before the persona is injected) does little and re-adding it <i>late</i> restores refusal; the lower panel "
        "puts this on one scale (0 = persona level, 1 = baseline level). Black diamonds are cells re-checked by "
        "generating full replies and judging them."),
    "outcomes": (
        "Full replies to the {n_eval} evaluation harmful prompts, judged as refused, complied or degenerate, without "
        "and with persona steering. The last pair is the first-token proxy the sweeps use (agreement with the judged "
        "refusal: {agree_b} baseline, {agree_p} persona). Compare the size of the drop with the paper's ("
        + PAPER_NOTE + "), not the levels: small models refuse less to begin with."),
    "alpha": (
        "How strongly the persona must be pushed to suppress refusal, and whether the push breaks the model: the top "
        "panel is the refusal rate on harmful prompts as α grows, the bottom panel the share of degenerate replies "
        "(and of refusals) on harmless prompts. Refusal that falls only where replies turn degenerate is damage, not "
        "a persona effect; the study uses α = {alpha}."),
    "heatmap": (
        "The gating sweep repeated for several persona layers (rows) at a coarser grid of re-add layers (columns); the "
        "left column is the persona-only rate of each row. The orange bar in each row separates re-add layers at or "
        "before that row's persona layer from those after it: a gate at the expression stage predicts low cells left "
        "of the bar and high cells right of it, wherever the persona is injected."),
    "projections": (
        "At each layer, how far the last prompt token lies along that layer's refusal direction. Before the persona "
        "layer ({P}) the two harmful lines coincide by construction; after it, a persona line that stays near the "
        "unsteered harmful line means the model still <i>computes</i> that the request is harmful even though it no "
        "longer <i>expresses</i> refusal, while a line that falls to the harmless level means the persona erased the "
        "representation."),
    "knockout": (
        "With the persona on, the persona direction is projected out over one window of layers at a time. A window "
        "whose knockout brings refusal back toward the baseline is one the persona's effect must pass through; the "
        "grey bars project out a random direction instead and should stay at the persona level."),
    "patching": (
        "Activations from the unsteered run are copied into the persona-steered run at one layer (left: all "
        "post-instruction positions at once) or one position (right). The normalized effect is 1 when that single "
        "patch restores refusal fully and 0 when it changes nothing, so it shows where, after the persona is "
        "injected, the information that decides refusal lives."),
    "cosine": (
        "Cosine similarity between the persona and refusal directions at each layer; the grey band is where 95% of "
        "random directions fall. Points inside the band mean the persona is not simply \u201cminus refusal\u201d: "
        "it suppresses refusal through a different direction, which is what makes gating (rather than cancellation) "
        "a meaningful question."),
    "selection": (
        "How the refusal direction was chosen (Arditi et al. 2024): each candidate layer's diff-in-means direction is "
        "ablated and the remaining refusal on held-out harmful prompts measured (bypass score, lower is better). The "
        "best candidate that also induces refusal when added and barely changes harmless outputs (KL filter) wins; "
        "grey points failed a filter (hover for the reason)."),
}
"""Caption templates per figure (``str.format`` fields are filled from the results)."""


# ============================================================================ numbers
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rate(rec: dict | None) -> tuple:
    if not rec:
        return None, None, None, None, None
    r = rec.get("refusal_rate", rec.get("rate"))
    ci = rec.get("ci") or [None, None]
    return r, ci[0], ci[1], rec.get("k"), rec.get("n")


def _pct(x: Any, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if _finite(x) else "n/a"


def _rate_text(rec: dict | None) -> str:
    r, lo, hi, k, n = _rate(rec)
    if r is None:
        return "n/a"
    return f"{_pct(r)} [{_pct(lo)}, {_pct(hi)}] ({k}/{n})"


def _newcombe(a: dict | None, b: dict | None) -> tuple[float, float, float] | None:
    """``rate(a) − rate(b)`` with Newcombe's hybrid score 95% interval."""
    pa, la, ua, _, _ = _rate(a)
    pb, lb, ub, _, _ = _rate(b)
    if not all(_finite(v) for v in (pa, la, ua, pb, lb, ub)):
        return None
    d = float(pa - pb)
    lo = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, lo, hi


def _pp(d: float) -> str:
    return f"{100 * d:+.1f} pp"


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
    facts.append(("persona steering", f"α = {steering.get('persona_alpha')} × s at layer {P} (s = "
                                      f"{steering.get('s', float('nan')):.3g}, {steering.get('norm')} norm)"))
    base = (results.get("baseline") or {}).get("refusal")
    pers = (results.get("persona") or {}).get("refusal")
    facts.append(("refusal rate, baseline (judged replies)", _rate_text(base)))
    facts.append(("refusal rate, persona (judged replies)", _rate_text(pers)))
    deg = (results.get("persona") or {}).get("degenerate")
    facts.append(("degenerate replies under persona", _rate_text(deg)))
    sweep = results.get("sweep") or {}
    facts.append(("sweep subset (first token): baseline / persona",
                  f"{_rate_text(sweep.get('baseline'))} / {_rate_text(sweep.get('persona'))}"))
    confirm = list(results.get("gating_confirm") or [])
    for c in confirm:
        facts.append((f"persona + refusal re-added at layer {c.get('layer')} ({c.get('cell')}, β = {c.get('beta')})",
                      f"judged {_rate_text(c.get('refusal'))}; first token "
                      f"{_pct(_rate(c.get('first_token'))[0])}"))

    # -- does the persona suppress refusal at all?
    b_rate = _rate(base)[0]
    d = _newcombe(pers, base)
    if b_rate is not None and b_rate < 0.2:
        findings.append(f"The model refuses only {_pct(b_rate)} of the harmful evaluation prompts without steering, "
                        "so there is little refusal for the persona to suppress: read the gating results with care.")
    if d is not None:
        if d[2] < 0:
            findings.append(f"Persona steering <b>lowered</b> refusal from {_pct(b_rate)} to {_pct(_rate(pers)[0])} "
                            f"({_pp(d[0])}, 95% CI [{_pp(d[1])}, {_pp(d[2])}]); for comparison, {PAPER_NOTE}.")
        elif d[0] < 0:
            findings.append(f"Persona steering lowered refusal from {_pct(b_rate)} to {_pct(_rate(pers)[0])}, but the "
                            f"change ({_pp(d[0])}, 95% CI [{_pp(d[1])}, {_pp(d[2])}]) is within noise at this n.")
        else:
            findings.append(f"Persona steering did <b>not</b> lower refusal ({_pct(b_rate)} → {_pct(_rate(pers)[0])}); "
                            "restoration has nothing to restore, so the gating sweep is not informative here.")
    dr = _rate(deg)[0]
    if dr is not None and dr >= 0.2:
        findings.append(f"{_pct(dr)} of the persona-steered replies are degenerate: part of the drop in refusal may "
                        "be damage to the model rather than a persona effect (see the dose–response figure).")

    # -- early vs late, from the confirmed cells
    cells = {c.get("cell"): c for c in confirm}
    early, late = cells.get("early"), cells.get("late")
    if early and late:
        e, l_ = _rate(early.get("refusal"))[0], _rate(late.get("refusal"))[0]
        dd = _newcombe(late.get("refusal"), early.get("refusal"))
        where = (f"re-adding refusal late (layer {late.get('layer')}) vs early (layer {early.get('layer')}), "
                 f"judged replies: {_pct(l_)} vs {_pct(e)}")
        if dd is None:
            findings.append(f"Early vs late could not be compared ({where}).")
        elif dd[1] > 0:
            findings.append(f"<b>Yes — late re-adding restored more refusal than early</b>: {where} "
                            f"({_pp(dd[0])}, 95% CI [{_pp(dd[1])}, {_pp(dd[2])}]).")
        elif dd[0] > 0:
            findings.append(f"Late re-adding gave more refusal than early, <b>but not clearly</b>: {where} "
                            f"({_pp(dd[0])}, 95% CI [{_pp(dd[1])}, {_pp(dd[2])}] includes 0).")
        elif dd[2] < 0:
            findings.append(f"<b>No — early re-adding restored more refusal than late</b>: {where} "
                            f"({_pp(dd[0])}, 95% CI [{_pp(dd[1])}, {_pp(dd[2])}]).")
        else:
            findings.append(f"<b>No — late re-adding did not restore more refusal than early</b>: {where} "
                            f"({_pp(dd[0])}, 95% CI [{_pp(dd[1])}, {_pp(dd[2])}]).")
        pr = _rate((sweep.get("persona_judged") or {}).get("refusal"))[0]
        br = _rate((sweep.get("baseline_judged") or {}).get("refusal"))[0]
        if pr is not None and br is not None:
            findings.append(f"On the same {sweep.get('n')} prompts, judged refusal is {_pct(br)} without steering and "
                            f"{_pct(pr)} with the persona alone.")

    # -- the first-token sweep, split at the persona layer
    gating = list(results.get("gating") or [])
    if gating and P is not None:
        beta = max(g["beta"] for g in gating)
        rows = [g for g in gating if g["beta"] == beta]
        before = [g["refusal_rate"] for g in rows if g["layer"] < P and _finite(g.get("refusal_rate"))]
        after = [g["refusal_rate"] for g in rows if g["layer"] > P and _finite(g.get("refusal_rate"))]
        best = max(rows, key=lambda g: (g.get("refusal_rate") or 0, -g["layer"]))
        parts = []
        if before:
            parts.append(f"{_pct(sum(before) / len(before))} averaged over the {len(before)} layers before the persona "
                         f"layer")
        if after:
            parts.append(f"{_pct(sum(after) / len(after))} over the {len(after)} layers after it")
        if parts:
            rest = best.get("restoration")
            rest_txt = f", restoration {rest:.2f}" if _finite(rest) else ""
            findings.append(f"First-token sweep (β = {beta:g}): refusal {' and '.join(parts)}; the highest is at layer "
                            f"{best['layer']} ({_pct(best.get('refusal_rate'))}{rest_txt}).")
        control = [g for g in results.get("gating_control") or [] if _finite(g.get("refusal_rate"))]
        if control:
            cm = sum(g["refusal_rate"] for g in control) / len(control)
            findings.append(f"Without the persona, re-adding refusal gives {_pct(cm)} on average over layers (control): "
                            "the direction's own effect, which the persona has to be gating for the story to hold.")
    return {"facts": facts, "findings": findings}


def _caption_fields(results: dict) -> dict:
    agree = results.get("first_token_agreement") or {}
    return {
        "P": (results.get("steering") or {}).get("persona_layer"),
        "alpha": (results.get("steering") or {}).get("persona_alpha"),
        "n_eval": _rate((results.get("baseline") or {}).get("refusal"))[4],
        "agree_b": _pct(agree.get("baseline"), 0),
        "agree_p": _pct(agree.get("persona"), 0),
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
"""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, mono_cols: Sequence[int] = ()) -> str:
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


def _label(label: str) -> str:
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
            cells.append(f'<td class="reply">{_label(r.get("label", "")) if r else ""}<br>'
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
        rows.append([side, s.get("n"), s.get("in_character"), s.get("kept"), labels.get("refusal"),
                     labels.get("compliance"), labels.get("degenerate")])
    pd = results.get("persona_direction") or {}
    return (f'<p>Persona direction: difference in means between rollouts under a compliant and a refusing system '
            f'prompt (method <span class="mono">{html.escape(str(pd.get("method")))}</span>, filter '
            f'<span class="mono">{html.escape(str(ro.get("filter")))}</span>).</p>'
            + _table(rows, ["system prompt side", "rollouts", "in character", "kept", "refused", "complied",
                            "degenerate"]))


def _config(results: dict) -> str:
    cfg = results.get("config") or {}
    rows = [[k, v] for k, v in sorted(cfg.items())]
    res = results.get("resolved_layers") or {}
    rrows = [[k, v] for k, v in sorted(res.items())]
    return (_table(rows, ["setting", "value"], mono_cols=(1,)) + "<h3>Resolved layers</h3>"
            + _table(rrows, ["layer list", "value"], mono_cols=(1,)))


def _prompt_sets(results: dict) -> str:
    ps = results.get("prompt_sets") or {}
    rows = [[k, v.get("name"), v.get("n"), v.get("source"), v.get("sha256")] for k, v in ps.items() if isinstance(v, dict)]
    if not rows:
        return '<p class="note">No prompt-set record in these results.</p>'
    return _table(rows, ["role", "set", "n", "source", "sha256"], mono_cols=(3, 4))


def _run_info(results: dict) -> str:
    info = results.get("run_info") or {}
    model = results.get("model") or {}
    rows = [["model id", model.get("model_id")], ["model checksum (sha256)", model.get("checksum")],
            ["judge", results.get("judge")], ["finished", info.get("finished")],
            ["total seconds", info.get("total_seconds")], ["resumed", info.get("resumed")],
            ["threads", info.get("threads")], ["platform", info.get("platform")], ["python", info.get("python")]]
    rows += [[f"version: {k}", v] for k, v in (info.get("versions") or {}).items()]
    rows += [[f"stage seconds: {k}", v] for k, v in (info.get("stage_seconds") or {}).items()]
    return _table(rows, ["", ""], mono_cols=(1,))


def build_report(run_dir: str | os.PathLike, *, results: dict | None = None,
                 figures: dict[str, go.Figure] | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Args:
        run_dir: a run folder holding ``results.json``.
        results, figures: already loaded results and drawn figures (as
            :func:`persona_refusal.analysis.make_figures` returns them), to avoid
            drawing twice; loaded from ``run_dir`` when omitted.
    """
    from persona_refusal.storage import atomic_write_text

    run_dir = Path(run_dir)
    if results is None or figures is None:
        from persona_refusal.analysis import make_figures

        results, figures = make_figures(run_dir)
    model = results.get("model") or {}
    h = headline(results)
    fields = _caption_fields(results)
    title = f"Persona gating of refusal — {model.get('model_id', 'unknown model')}"

    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>",
        # plotly.js, inlined once so the report opens offline
        '<script type="text/javascript">' + get_plotlyjs() + "</script>",
        "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">persona_refusal gating study · results schema {html.escape(str(results.get("schema")))} · '
        f'finished {html.escape(str((results.get("run_info") or {}).get("finished", "n/a")))}</p>',
        '<p>Does a compliant persona suppress refusal by <i>gating its expression</i>? The study steers the model '
        'toward a compliant persona, then adds the refusal direction back at every layer in turn: if refusal is '
        'computed early but expressed late (Zhong &amp; Li 2026), re-adding it before the persona is injected '
        'should do little and re-adding it after should restore it. Layers are <span class="mono">resid_pre</span> '
        'indices; rates carry Wilson 95% intervals.</p>',
        '<h2 id="summary">Headline</h2>',
        '<ul class="findings">' + "".join(f"<li>{s}</li>" for s in h["findings"]) + "</ul>",
        _table(h["facts"], ["quantity", "value"]),
        '<p class="note">Differences between rates: Newcombe 95% interval from the two Wilson intervals (treats '
        "them as independent; conservative for these paired measurements). Judged = substring judge on generated "
        "replies; first token = the greedy first token is a refusal token.</p>",
        "<nav><ol>" + "".join(f'<li><a href="#fig-{n}">{html.escape(_TITLES.get(n, n).split(". ", 1)[-1])}</a></li>'
                              for n in figures) +
        '<li><a href="#config">Configuration</a></li><li><a href="#prompts">Prompt sets</a></li>'
        '<li><a href="#rollouts">Persona rollouts</a></li><li><a href="#examples">Example replies</a></li>'
        '<li><a href="#runinfo">Run information</a></li></ol></nav>',
    ]
    for name, fig in figures.items():
        w, hgt = FIGURE_SIZES.get(name, (1000, 600))
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"plot-{name}",
                          default_width="100%", default_height=f"{hgt}px", config={"displaylogo": False})
        try:
            caption = CAPTIONS.get(name, "").format(**fields)
        except (KeyError, IndexError, ValueError):
            caption = CAPTIONS.get(name, "")
        parts += [f'<section id="fig-{name}">', f"<h2>{html.escape(_TITLES.get(name, name))}</h2>",
                  f"<figure>{div}<figcaption>{caption}</figcaption></figure>", "</section>"]
    parts += [
        '<h2 id="config">Configuration</h2>', _config(results),
        '<h2 id="prompts">Prompt sets</h2>', _prompt_sets(results),
        '<h2 id="rollouts">Persona rollouts</h2>', _rollouts(results),
        '<h2 id="examples">Example replies</h2>',
        '<p class="note">The first evaluation prompts, unedited model output (judged label above each reply).</p>',
        _examples(results),
        '<h2 id="runinfo">Run information</h2>', _run_info(results),
        "</body>", "</html>",
    ]
    return atomic_write_text(run_dir / "report.html", "\n".join(parts) + "\n")
