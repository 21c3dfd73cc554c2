"""Dose–response of persona steering (the α sweep) and its cost in coherence."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, RATE_AXIS, band, empty, error_bars, legend_below, model_label, persona_layer, rate_pct, style, persona_alpha,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import GatingResults

__all__ = ["alpha_figure"]


def alpha_figure(results: dict) -> go.Figure:
    """Dose–response of persona steering, and what it costs in coherence.

    Top: first-token refusal rate on the harmful sweep prompts as the persona strength α
    grows (α = 0 is the unsteered baseline), with Wilson 95% bands. Bottom: on harmless
    prompts, the share of degenerate replies (gibberish, repetition) and of refusals, with
    95% error bars, judged from generated replies. The dashed line marks the α the study
    uses. A good operating point has low refusal on top and near-zero degenerate replies
    below: suppression that comes from incoherence is not a persona effect.
    """
    results = GatingResults.of(results)
    rows = sorted(results.alpha_sweep or [], key=lambda r: r.alpha)
    sweep = results.sweep or {}
    coh0 = results.coherence_baseline
    alpha_used = persona_alpha(results)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.09,
                        subplot_titles=("harmful prompts: refusal (first token)",
                                        "harmless prompts: coherence of generated replies"))
    if not rows:
        return empty(fig, "no α sweep in these results", "Persona strength: no data")
    pts = ([(0.0, sweep.get("baseline"))] if sweep.get("baseline") else []) + [(r.alpha, r) for r in rows]
    x = [a for a, _ in pts]
    rr = [rate_pct(r) for _, r in pts]
    band(fig, x, [r[1] for r in rr], [r[2] for r in rr], COLORS["persona"], "refusal", row=1, col=1)
    fig.add_trace(go.Scatter(
        x=x, y=[r[0] for r in rr], mode="lines+markers", name="refusal, harmful prompts (first token)",
        legendgroup="refusal", line=dict(color=COLORS["persona"], width=2.5), marker=dict(size=8),
        customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
        hovertemplate=("α = %{x}<br>refusal %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                       "(%{customdata[2]}/%{customdata[3]})<extra>harmful</extra>")), row=1, col=1)
    cpts = ([(0.0, coh0)] if coh0 else []) + [(r.alpha, r.get("coherence")) for r in rows]
    cx = [a for a, _ in cpts]
    for key, name, color, dash in (("degenerate", "degenerate replies, harmless prompts", COLORS["degenerate"], "solid"),
                                   ("refusal", "refusals, harmless prompts", COLORS["harmless"], "dot")):
        cr = [rate_pct((c or {}).get(key)) for _, c in cpts]
        y = [r[0] for r in cr]
        fig.add_trace(go.Scatter(
            x=cx, y=y, mode="lines+markers", name=name, line=dict(color=color, width=2, dash=dash),
            marker=dict(size=7), error_y=error_bars(y, [r[1] for r in cr], [r[2] for r in cr]) | dict(color=color),
            customdata=[[r[1], r[2], r[3], r[4]] for r in cr],
            hovertemplate=("α = %{x}<br>" + key + " %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           "(%{customdata[2]}/%{customdata[3]})<extra>harmless</extra>")), row=2, col=1)
    if finite(alpha_used):
        for r in (1, 2):
            ann = dict(annotation=dict(text=f"α used = {alpha_used:g}", font=dict(size=11)),
                       annotation_position="top right") if r == 1 else {}
            fig.add_vline(x=alpha_used, line=dict(color="#444", width=1, dash="dash"), row=r, col=1,
                          exclude_empty_subplots=False, **ann)
    fig.update_yaxes(title_text=RATE_AXIS, range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="share of replies (%)", range=[-3, 103], row=2, col=1)
    fig.update_xaxes(title_text="persona strength α (× common norm s)", row=2, col=1)
    n_h = rr[0][4] if rr else None
    n_c = next((r[4] for r in (rate_pct((c or {}).get("degenerate")) for _, c in cpts) if r[4]), None)
    style(fig, f"Persona strength: refusal suppression vs coherence — {model_label(results)}",
          f"harmful: n = {n_h} sweep prompts · harmless: n = {n_c} prompts · α = 0 is the unsteered model · "
          f"persona at layer {persona_layer(results)}")
    return legend_below(fig, -0.13, 110)


CAPTION = """
    How strongly the persona must be pushed to suppress refusal, and whether the push breaks the model: the top
    panel is the refusal rate on harmful prompts as α grows, the bottom panel the share of degenerate replies
    (and of refusals) on harmless prompts. Refusal that falls only where replies turn degenerate is damage, not
    a persona effect; the study uses α = {alpha}.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="alpha", title="Persona strength: dose–response and coherence", size=(1000, 640),
                draw=alpha_figure, stage="alpha_sweep", order=30, caption=prose(CAPTION)))
