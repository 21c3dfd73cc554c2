"""Persona layer × re-add layer: the gating sweep for several persona layers."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import COLORS, empty, model_label, rate_pct, style, persona_alpha
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import fmt, percent
from persona_refusal.results import GatingResults

__all__ = ["heatmap_figure"]


def heatmap_figure(results: dict) -> go.Figure:
    """Does the answer depend on where the persona is injected?

    Each row is a persona layer (steering added there), each column a layer where the
    refusal direction is re-added (strength β); the cell is the first-token refusal rate
    (%) on the sweep prompts. The narrow left column is the persona-only rate for that
    row (no re-add): the level re-adding has to beat. The orange bar in each row separates
    re-add layers at or before the row's persona layer (left) from those after it
    (right). Gating predicts low values left of the bar and high values right of it in
    every row.
    """
    hm = GatingResults.of(results).heatmap or {}
    pl = list(hm.get("persona_layers") or [])
    rl = list(hm.get("refusal_layers") or [])
    rate = hm.get("refusal_rate") or []
    score = hm.get("score_mean") or []
    only = hm.get("persona_only") or []
    fig = make_subplots(rows=1, cols=2, column_widths=[0.1, 0.9], shared_yaxes=True, horizontal_spacing=0.025)
    if not pl or not rl:
        return empty(fig, "no heatmap in these results", "Persona layer × re-add layer: no data")
    z = [[percent(v) for v in row] for row in rate]
    n = next((o.get("n") for o in only if o), None)
    y = list(range(len(pl)))
    ylab = [f"persona @ {p}" for p in pl]
    oz = [[rate_pct(o)[0]] for o in only]
    fig.add_trace(go.Heatmap(
        z=oz, x=["persona only"], y=y, coloraxis="coloraxis", texttemplate="%{z:.0f}%", textfont=dict(size=12),
        customdata=[[[rate_pct(o)[1], rate_pct(o)[2], p]] for o, p in zip(only, pl)],
        hovertemplate=("persona at layer %{customdata[2]}, no re-add<br>refusal %{z:.1f}% "
                       "[%{customdata[0]:.1f}, %{customdata[1]:.1f}]<extra>persona only</extra>"),
        xgap=2, ygap=2), row=1, col=1)
    custom = [[[p, "before" if l < p else ("at" if l == p else "after"),
                fmt(score[i][j] if i < len(score) and j < len(score[i]) else None, ".2f")]
               for j, l in enumerate(rl)] for i, p in enumerate(pl)]
    cell_font = 12 if len(rl) <= 14 else (9 if len(rl) <= 28 else 0)  # no labels once cells get too narrow
    fig.add_trace(go.Heatmap(
        z=z, x=rl, y=y, coloraxis="coloraxis", texttemplate="%{z:.0f}%" if cell_font else None,
        textfont=dict(size=cell_font or 9), customdata=custom,
        hovertemplate=("persona at layer %{customdata[0]}, refusal re-added at layer %{x} "
                       "(%{customdata[1]} persona)<br>refusal %{z:.1f}%<br>mean first-token refusal log-odds "
                       "%{customdata[2]}<extra></extra>"),
        xgap=2, ygap=2), row=1, col=2)
    # persona-layer ticks (in the main panel's layer coordinates)
    srt = sorted(rl)
    mids = [(u + v) / 2 for u, v in zip(srt, srt[1:])]
    half_lo = (srt[1] - srt[0]) / 2 if len(srt) > 1 else 0.5
    half_hi = (srt[-1] - srt[-2]) / 2 if len(srt) > 1 else 0.5
    edges = [srt[0] - half_lo] + mids + [srt[-1] + half_hi]
    fig.update_xaxes(range=[edges[0], edges[-1]], row=1, col=2)
    for i, p in enumerate(pl):
        # boundary between re-add layers at/before the persona layer and those after it
        k = sum(1 for l in srt if l <= p)
        fig.add_shape(type="line", x0=edges[k], x1=edges[k], y0=i - 0.5, y1=i + 0.5, xref="x2", yref="y2",
                      line=dict(color=COLORS["persona"], width=3))
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, cmax=100,
                                     colorbar=dict(title=dict(text="refusal<br>rate (%)", side="top"),
                                                   ticksuffix="%", len=0.9, thickness=14)))
    fig.update_yaxes(tickmode="array", tickvals=y, ticktext=ylab, title_text="persona steering layer", row=1, col=1)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_xaxes(title_text="refusal re-added at layer (resid_pre index)", tickmode="array", tickvals=rl,
                     row=1, col=2)
    fig.update_xaxes(tickangle=0, row=1, col=1)
    style(fig, f"Persona layer × re-add layer: first-token refusal rate — {model_label(results)}",
          f"n = {n} sweep prompts · re-add strength β = {fmt(hm.get('beta'), 'g')} · persona α = "
          f"{fmt(persona_alpha(results), 'g')} · orange bar: cells to its right re-add "
          f"refusal after the row's persona layer")
    fig.update_layout(margin=dict(l=120))
    fig.update_yaxes(ticks="", showline=False, row=1, col=2)
    return fig


CAPTION = """
    The gating sweep repeated for several persona layers (rows) at a coarser grid of re-add layers (columns);
    the left column is the persona-only rate of each row. The orange bar in each row separates re-add layers at
    or before that row's persona layer from those after it: a gate at the expression stage predicts low cells
    left of the bar and high cells right of it, wherever the persona is injected.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="heatmap", title="Persona layer × re-add layer", size=(1000, 560), draw=heatmap_figure,
                stage="heatmap", order=40, caption=prose(CAPTION)))
