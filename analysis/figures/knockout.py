"""Persona-direction knockout by window of layers."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import (
    COLORS, RATE_AXIS, empty, error_bars, legend_below, model_label, persona_layer, rate_pct, style, persona_alpha,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import ci_text, fmt
from persona_refusal.results import GatingResults

__all__ = ["knockout_figure"]


def knockout_figure(results: dict) -> go.Figure:
    """Which layers does the persona need to suppress refusal?

    With persona steering on, the persona direction is projected out of ``resid_pre``
    over a window of consecutive layers (x); bars are the first-token refusal rate with
    Wilson 95% error bars. Grey bars project out a random direction over the same window
    (the control: ablating *something* should not matter). Dotted lines are the baseline
    and the persona-only rates. A persona bar that climbs back toward the baseline, while
    the random bar stays at the persona level, marks a window the persona's effect runs
    through. The shaded window contains the injection layer.
    """
    results = GatingResults.of(results)
    ko = list(results.knockout or [])
    sweep = results.sweep or {}
    P = persona_layer(results)
    fig = go.Figure()
    if not ko:
        return empty(fig, "no knockout in these results", "Persona knockout: no data")
    windows = sorted({(k.start, k.end) for k in ko})
    labels = [f"{a}–{b - 1}" for a, b in windows]
    for kind, name, color in (("persona", "persona direction projected out", COLORS["persona"]),
                              ("random", "random direction projected out (control)", COLORS["random"])):
        by = {(k.start, k.end): k for k in ko if k.get("direction") == kind}
        rr = [rate_pct(by.get(w)) for w in windows]
        y = [r[0] for r in rr]
        fig.add_trace(go.Bar(
            x=labels, y=y, name=name, marker_color=color, error_y=error_bars(y, [r[1] for r in rr], [r[2] for r in rr])
            | dict(color="#333"),
            customdata=[[r[1], r[2], r[3], r[4], fmt((by.get(w) or {}).get("restoration"), ".2f"),
                         ci_text(*((by.get(w) or {}).get("restoration_ci") or [None, None]))]
                        for r, w in zip(rr, windows)],
            hovertemplate=("layers %{x} ablated<br>refusal %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           "(%{customdata[2]}/%{customdata[3]})<br>restoration %{customdata[4]} %{customdata[5]}"
                           "<extra>" + kind + "</extra>")))
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona only")):
        r, lo, hi, k, n = rate_pct(sweep.get(key))
        if r is None:
            continue
        fig.add_hline(y=r, line=dict(color=COLORS[key], dash="dot", width=2), layer="below")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines",
                                 name=f"{name}: {r:.0f}% [{lo:.0f}, {hi:.0f}]",
                                 line=dict(color=COLORS[key], dash="dot", width=2)))
    if P is not None:
        for i, (a, b) in enumerate(windows):
            if a <= P < b:
                fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=COLORS["late"], line_width=0, layer="below",
                              annotation=dict(text=f"contains persona layer {P}", font=dict(size=11)),
                              annotation_position="top")
    fig.update_layout(barmode="group", bargap=0.3)
    fig.update_yaxes(title_text=RATE_AXIS + "<br><sup>greedy first token, persona steering on</sup>",
                     range=[0, 105])
    w = (results.resolved_layers or {}).get("knockout_window")
    fig.update_xaxes(title_text=f"layers where the direction is projected out (window of {w}, resid_pre)")
    n = next((k.get("n") for k in ko), None)
    style(fig, f"Persona-direction knockout by window of layers — {model_label(results)}",
          f"n = {n} sweep prompts · persona α = {fmt(persona_alpha(results), 'g')} "
          f"at layer {P} · error bars: Wilson 95%")
    return legend_below(fig, -0.16, 120)


CAPTION = """
    With the persona on, the persona direction is projected out over one window of layers at a time. A window
    whose knockout brings refusal back toward the baseline is one the persona's effect must pass through; the
    grey bars project out a random direction instead and should stay at the persona level.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="knockout", title="Persona-direction knockout", size=(1000, 600), draw=knockout_figure,
                stage="knockout", order=60, caption=prose(CAPTION)))
