"""The headline figure: re-adding refusal under persona steering, layer by layer."""

from __future__ import annotations

from typing import Iterator, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, RATE_AXIS, band, clip_band, clipped_points, empty, error_bars, hline_trace, layers_axis, model_label,
    no_data, persona_layer, persona_marker, rate_pct, rgba, shades_of, style, persona_alpha,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import ci_text, finite, fmt, percent_text
from persona_refusal.results import GatingResults

__all__ = ["gating_figure"]


def _at_beta(records: list[dict], beta: float) -> list[dict]:
    """The sweep records of one strength β, ordered by layer."""
    return sorted((g for g in records if g.beta == beta), key=lambda g: g.layer)


def _defined(records: list[dict], betas: Sequence[float], colors: Sequence[str], key: str) -> Iterator[tuple]:
    """``(β, colour, records, layers, values of key)`` for each β with a finite ``key`` somewhere."""
    for beta, color in zip(betas, colors):
        rows = _at_beta(records, beta)
        values = [g.get(key) for g in rows]
        if any(finite(v) for v in values):
            yield beta, color, rows, [g.layer for g in rows], values


def gating_figure(results: dict) -> go.Figure:
    """Where does re-adding the refusal direction restore refusal under persona steering?

    Top panel: with compliant-persona steering on (``α·s·v̂`` at the persona layer), the
    refusal direction ``β·s·r̂`` is re-added at one layer at a time (x). y is the share of
    the sweep prompts whose greedy first token is a refusal token, with Wilson 95% bands,
    one purple line per β. The dashed grey line is the control: the same re-add without
    persona steering. Dotted horizontal lines (with their CI bands) are the unsteered
    baseline and the persona-only rate on the same prompts. Black diamonds are the cells
    confirmed by generating full replies and judging them (a different, stricter
    measure). The shaded regions split re-add layers into *early* (before the persona is
    injected) and *late* (after); the dashed vertical line is the persona layer.

    Middle panel: restoration ``(rate − persona)/(baseline − persona)`` of the rate, with
    its paired bootstrap 95% interval (0 = persona level, 1 = baseline level).

    Bottom panel: the mean first-token refusal log-odds (``log p(refusal token) −
    log(1 − p)``) with its 95% interval, for the same conditions, against the baseline and
    persona-only levels. It is continuous, so it shows partial restoration before any
    greedy first token flips. Restoration ``(x − persona)/(baseline − persona)`` of the
    rate and of the score, with paired bootstrap intervals, is in the hover text. If
    refusal is gated at the expression stage, the lines rise only in the late region.

    Read it as: a curve that stays at the persona level on the left and climbs to the
    baseline on the right supports "refusal is computed early but expressed late, and the
    persona gates its expression".
    """
    results = GatingResults.of(results)
    gating = list(results.gating or [])
    control = list(results.gating_control or [])
    confirm = list(results.gating_confirm or [])
    sweep = results.sweep or {}
    P = persona_layer(results)
    steering = results.steering or {}
    n = sweep.get("n")

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.48, 0.24, 0.28], vertical_spacing=0.05)
    layers = sorted({int(g.layer) for g in gating + control})
    if not layers:
        return empty(fig, "no gating sweep in these results", "Persona gating: no data")
    x_range = (min(layers) - 0.6, max(layers) + 0.6)

    _regions(fig, P, x_range)

    betas, shades, cbetas, rest_all = _rate_panel(fig, gating, control, confirm, sweep, P, x_range)

    _restoration_panel(fig, gating, betas, shades, rest_all, layers, sweep)

    _score_panel(fig, gating, control, sweep, betas, shades, cbetas)

    persona_marker(fig, P, rows=[1, 2, 3], label=False)
    layers_axis(fig, layers)
    fig.update_yaxes(title_text=RATE_AXIS + "<br><sup>greedy first token is a refusal token</sup>",
                     range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="restoration<br><sup>0 = persona, 1 = baseline</sup>", row=2, col=1)
    fig.update_yaxes(title_text="refusal log-odds<br><sup>first token, mean ± 95% CI</sup>", row=3, col=1)
    fig.update_xaxes(title_text="layer where the refusal direction is re-added (resid_pre index)", row=3, col=1)
    sub = (f"n = {n} harmful prompts (sweep subset) · persona α = {fmt(persona_alpha(results), 'g')} at "
           f"layer {P} · refusal direction from layer {(results.refusal_direction or {}).get('layer')} · "
           f"strengths in units of s = {fmt(steering.get('s'), '.3g')}")
    style(fig, f"Re-adding refusal under persona steering, layer by layer — {model_label(results)}", sub)
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.12, yanchor="top", font=dict(size=11)),
                      margin=dict(r=20, b=130))
    return fig


def _regions(fig: go.Figure, P, x_range) -> None:
    """Shade the early (before the persona layer) and late (after) re-add regions."""
    if P is not None:
        for x0, x1, color, text, xa in ((x_range[0], P, COLORS["early"], "early: before persona injection", "left"),
                                        (P, x_range[1], COLORS["late"], "late: after", "right")):
            if x1 <= x0:
                continue
            for r in (1, 2, 3):
                fig.add_vrect(x0=x0, x1=x1, fillcolor=color, line_width=0, layer="below", row=r, col=1,
                              exclude_empty_subplots=False)
        fig.add_annotation(x=P, y=1.0, xref="x", yref="y domain",
                           text=f"◀ early: re-added before the persona (layer {P})", showarrow=False,
                           xanchor="right", yanchor="bottom", xshift=-4, font=dict(size=11, color="#3a7ca5"))
        fig.add_annotation(x=P, y=1.0, xref="x", yref="y domain", text="late: re-added after ▶", showarrow=False,
                           xanchor="left", yanchor="bottom", xshift=4, font=dict(size=11, color="#b06f00"))


def _rate_panel(fig: go.Figure, gating: list, control: list, confirm: list, sweep: dict, P, x_range):
    """Top panel: first-token refusal rates per re-add layer, control, references, confirmed cells."""
    # reference lines: baseline and persona-only on the sweep subset (first-token measure)
    judged = {k: (sweep.get(f"{k}_judged") or {}).get("refusal") for k in ("baseline", "persona")}
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona only")):
        jr = rate_pct(judged[key])
        extra = f"<br>judged from replies: {percent_text(jr[0])}" if jr[0] is not None else ""
        hline_trace(fig, x_range, sweep.get(key), name, COLORS[key], row=1, extra=extra)

    # gating lines, one per beta
    rest_all: list = []
    betas = sorted({g.beta for g in gating})
    shades = shades_of(COLORS["gating"], len(betas))
    for beta, color in zip(betas, shades):
        rows = _at_beta(gating, beta)
        x = [g.layer for g in rows]
        rr = [rate_pct(g) for g in rows]
        group = f"gating β={beta:g}"
        band(fig, x, [r[1] for r in rr], [r[2] for r in rr], color, group, row=1, col=1)
        custom = [[r[1], r[2], r[3], r[4], fmt(g.get("restoration"), ".2f"),
                   ci_text(*(g.get("restoration_ci") or [None, None])),
                   "before" if P is not None and g.layer < P else ("at" if g.layer == P else "after")]
                  for g, r in zip(rows, rr)]
        fig.add_trace(go.Scatter(
            x=x, y=[r[0] for r in rr], mode="lines+markers", name=f"persona + refusal re-added, β={beta:g}",
            legendgroup=group, line=dict(color=color, width=2.5), marker=dict(size=7), customdata=custom,
            hovertemplate=("re-added at layer %{x} (%{customdata[6]} persona)<br>refusal %{y:.1f}% "
                           "[%{customdata[0]:.1f}, %{customdata[1]:.1f}] (%{customdata[2]}/%{customdata[3]})"
                           "<br>restoration %{customdata[4]} %{customdata[5]}<extra>β=" + f"{beta:g}</extra>")),
            row=1, col=1)
        rest_all += [g.get("restoration") for g in rows] + [c for g in rows for c in (g.get("restoration_ci") or [])]

    # control: refusal re-added without persona steering
    cbetas = sorted({g.beta for g in control})
    for i, beta in enumerate(cbetas):
        rows = _at_beta(control, beta)
        x = [g.layer for g in rows]
        rr = [rate_pct(g) for g in rows]
        color = shades_of(COLORS["control"], len(cbetas))[i]
        group = f"control β={beta:g}"
        band(fig, x, [r[1] for r in rr], [r[2] for r in rr], color, group, alpha=0.10, row=1, col=1)
        fig.add_trace(go.Scatter(
            x=x, y=[r[0] for r in rr], mode="lines+markers", name=f"control: refusal re-added, no persona, β={beta:g}",
            legendgroup=group, line=dict(color=color, width=2, dash="dash"), marker=dict(size=5, symbol="square"),
            customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
            hovertemplate=("control (no persona), re-added at layer %{x}<br>refusal %{y:.1f}% "
                           "[%{customdata[0]:.1f}, %{customdata[1]:.1f}] (%{customdata[2]}/%{customdata[3]})"
                           "<extra>control β=" + f"{beta:g}</extra>")), row=1, col=1)

    # generation-confirmed cells: judged refusal rate of full replies
    if confirm:
        cr = [rate_pct(c.get("refusal")) for c in confirm]
        ft = [rate_pct(c.get("first_token")) for c in confirm]
        y = [r[0] for r in cr]
        fig.add_trace(go.Scatter(
            x=[c.layer for c in confirm], y=y, mode="markers+text", name="confirmed by generation (judged replies)",
            marker=dict(symbol="diamond", size=13, color=COLORS["confirm"], line=dict(color="white", width=1.5)),
            error_y=error_bars(y, [r[1] for r in cr], [r[2] for r in cr]) | dict(color=COLORS["confirm"]),
            text=[c.get("cell", "") for c in confirm], textposition="middle right",
            textfont=dict(size=11, color=COLORS["confirm"]),
            customdata=[[c.get("cell", ""), r[1], r[2], r[3], r[4], c.get("beta"), f[0]] for c, r, f in
                        zip(confirm, cr, ft)],
            hovertemplate=("%{customdata[0]} cell: re-added at layer %{x}, β=%{customdata[5]}<br>judged refusal "
                           "%{y:.1f}% [%{customdata[1]:.1f}, %{customdata[2]:.1f}] (%{customdata[3]}/%{customdata[4]})"
                           "<br>first token: %{customdata[6]:.1f}%<extra>generated + judged</extra>")),
            row=1, col=1)
    return betas, shades, cbetas, rest_all


def _restoration_panel(fig: go.Figure, gating: list, betas, shades, rest_all: list, layers: list, sweep: dict) -> None:
    """Middle panel: restoration of the rate with its paired bootstrap interval."""
    for y, key in ((0, "persona"), (1, "baseline")):
        fig.add_hline(y=y, line=dict(color=COLORS[key], width=1, dash="dot"), row=2, col=1,
                      exclude_empty_subplots=False)
    rng = clip_band(rest_all, lo=-0.1, hi=1.1)
    any_rest = False
    for beta, color, rows, x, pt in _defined(gating, betas, shades, "restoration"):
        any_rest = True
        ci = [(g.get("restoration_ci") or [None, None]) for g in rows]
        ys, sym = clipped_points(pt, rng)
        ci_lo = [min(max(c[0], rng[0]), rng[1]) if finite(c[0]) else None for c in ci]
        ci_hi = [min(max(c[1], rng[0]), rng[1]) if finite(c[1]) else None for c in ci]
        fig.add_trace(go.Scatter(
            x=x, y=ys, mode="lines+markers", name=f"restoration, β={beta:g}", legendgroup=f"gating β={beta:g}",
            showlegend=False, line=dict(color=color, width=2), marker=dict(size=7, symbol=sym),
            error_y=error_bars(ys, ci_lo, ci_hi) | dict(color=rgba(color, 0.6)),
            customdata=[[fmt(p, ".2f"), ci_text(*c)] for p, c in zip(pt, ci)],
            hovertemplate=("re-added at layer %{x}<br>restoration %{customdata[0]} %{customdata[1]}"
                           "<br>(0 = persona level, 1 = baseline level)<extra>β=" + f"{beta:g}</extra>")),
            row=2, col=1)
    if not any_rest:
        # an invisible trace gives the empty panel's axes data (plotly draws the panel's
        # shapes with NaN coordinates on an axis pair without any trace)
        fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[0, 0], mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip"), row=2, col=1)
        b, p = rate_pct(sweep.get("baseline"))[0], rate_pct(sweep.get("persona"))[0]
        no_data(fig, f"restoration undefined: baseline and persona refusal rates are equal on the sweep subset "
                      f"({percent_text(b)} vs {percent_text(p)})", xref="x2 domain", yref="y2 domain", x=0.5, y=0.5)
        rng = (-0.1, 1.1)
    fig.update_yaxes(range=list(rng), row=2, col=1)
    fig.add_annotation(x=1, xref="x2 domain", y=1, yref="y2", text="baseline level", showarrow=False, xanchor="right",
                       yanchor="bottom", font=dict(size=10, color=COLORS["baseline"]))
    fig.add_annotation(x=1, xref="x2 domain", y=0, yref="y2", text="persona level", showarrow=False, xanchor="right",
                       yanchor="top", font=dict(size=10, color=COLORS["persona"]))


def _score_panel(fig: go.Figure, gating: list, control: list, sweep: dict, betas, shades, cbetas) -> None:
    """Bottom panel: mean first-token refusal log-odds (continuous; moves before any greedy token flips)."""
    # score row: mean first-token refusal log-odds (continuous; moves even when no greedy
    # first token flips, so gating shows up here before it shows in the rates)
    for key, name in (("baseline", "baseline"), ("persona", "persona only")):
        rec = sweep.get(key) or {}
        if finite(rec.get("score_mean")):
            fig.add_hline(y=rec.score_mean, line=dict(color=COLORS[key], width=1, dash="dot"), row=3, col=1,
                          exclude_empty_subplots=False)
            fig.add_annotation(x=1, xref="x3 domain", y=rec.score_mean, yref="y3", text=f"{name} level",
                               showarrow=False, xanchor="right", yanchor="bottom",
                               font=dict(size=10, color=COLORS[key]))
    series = ((gating, betas, shades, "solid", "persona + refusal"),
              (control, cbetas, shades_of(COLORS["control"], len(cbetas)), "dash", "control"))
    for rows_all, betas_k, colors, dash, label in series:
        for beta, color, rows, x, y in _defined(rows_all, betas_k, colors, "score_mean"):
            ci = [(g.get("score_ci") or [None, None]) for g in rows]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=f"{label} log-odds, β={beta:g}",
                legendgroup=("gating" if label.startswith("persona") else "control") + f" β={beta:g}",
                showlegend=False, line=dict(color=color, width=2, dash=dash), marker=dict(size=5),
                error_y=error_bars(y, [c[0] for c in ci], [c[1] for c in ci]) | dict(color=rgba(color, 0.5)),
                customdata=[[fmt(v, ".2f"), ci_text(*c), fmt(g.get("score_restoration"), ".2f"),
                             ci_text(*(g.get("score_restoration_ci") or [None, None]))] for v, c, g in
                            zip(y, ci, rows)],
                hovertemplate=("re-added at layer %{x}<br>mean log-odds %{customdata[0]} %{customdata[1]}"
                               "<br>score restoration %{customdata[2]} %{customdata[3]}<extra>" + label
                               + f" β={beta:g}</extra>")),
                row=3, col=1)


CAPTION = """
    With the compliant persona steered in at layer {P}, the refusal direction is added back at one layer at a
    time (x axis); the purple line is the share of harmful prompts whose first reply token is a refusal token,
    the dashed grey line the same re-add without the persona, and the dotted lines the baseline and persona-only
    levels. If the persona gates refusal at the expression stage, re-adding it in the shaded <i>early</i> region
    (before the persona is injected) does little and re-adding it <i>late</i> restores refusal; the lower panel
    puts this on one scale (0 = persona level, 1 = baseline level). Black diamonds are cells re-checked by
    generating full replies and judging them.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="gating", title="Where re-adding refusal works: the gating sweep", size=(1000, 900),
                draw=gating_figure, stage="gating", order=10, caption=prose(CAPTION)))
