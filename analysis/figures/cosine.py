"""Persona direction vs refusal direction, per layer, against a random null."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import (
    COLORS, LAYER_AXIS, empty, layers_axis, legend_below, model_label, persona_layer, persona_marker, rgba, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import GatingResults

__all__ = ["cosine_figure"]


def cosine_figure(results: dict) -> go.Figure:
    """Are the persona and refusal directions the same direction?

    Cosine similarity between the compliant-persona direction and the refusal direction
    (each layer's own diff-in-means) at every layer. The grey band holds 95% of cosines
    between random unit vectors and a fixed direction in this model's width: points
    inside it are indistinguishable from unrelated directions. A strongly negative cosine
    would mean "compliant persona" is little more than "minus refusal"; a cosine near zero
    means the persona suppresses refusal through a separate direction. Gaps are layers
    where one of the directions is exactly zero (e.g. layer 0 sees only the embedding).
    """
    results = GatingResults.of(results)
    cs = results.cosines or {}
    layers = list(cs.get("layers") or [])
    cos = list(cs.get("cosine") or [])
    null = cs.get("null") or {}
    fig = go.Figure()
    if not layers:
        return empty(fig, "no cosines in these results", "Persona vs refusal direction: no data")
    P = persona_layer(results)
    if finite(null.get("lo")) and finite(null.get("hi")):
        fig.add_hrect(y0=null["lo"], y1=null["hi"], fillcolor=rgba(COLORS["random"], 0.22), line_width=0,
                      layer="below")
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", marker=dict(symbol="square", size=14,
                                                            color=rgba(COLORS["random"], 0.4)),
            name=f"random null: 95% of {null.get('n', '?')} random unit vectors"))
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    inside = [(finite(c) and null.get("lo", -2) <= c <= null.get("hi", 2)) for c in cos]
    fig.add_trace(go.Scatter(
        x=layers, y=cos, mode="lines+markers", name="cos(persona direction, refusal direction)",
        line=dict(color=COLORS["gating"], width=2.5), marker=dict(size=8, color=[
            "white" if i else COLORS["gating"] for i in inside], line=dict(color=COLORS["gating"], width=2)),
        connectgaps=False,
        customdata=[["inside the random null" if i else ("outside the random null" if finite(c) else "")]
                    for i, c in zip(inside, cos)],
        hovertemplate="layer %{x}<br>cosine %{y:.3f}<br>%{customdata[0]}<extra></extra>"))
    missing = [l for l, c in zip(layers, cos) if not finite(c)]
    if missing:
        fig.add_trace(go.Scatter(
            x=missing, y=[0] * len(missing), mode="markers", name="undefined (a direction is zero)",
            marker=dict(symbol="x-thin", size=10, line=dict(color="#888", width=2)),
            hovertemplate="layer %{x}: a direction is exactly zero here<extra></extra>"))
    rl = (results.refusal_direction or {}).get("layer")
    if finite(rl):
        fig.add_vline(x=rl, line=dict(color=COLORS["baseline"], width=1, dash="dot"),
                      annotation=dict(text=f"selected refusal layer {rl}", font=dict(size=11, color=COLORS["baseline"])),
                      annotation_position="bottom left" if rl > (min(layers) + max(layers)) / 2 else "bottom right")
    persona_marker(fig, P)
    layers_axis(fig, layers)
    v = [c for c in cos if finite(c)] + [null.get("lo", 0), null.get("hi", 0)]
    span = max(0.3, max(abs(x) for x in v) * 1.15) if v else 1
    fig.update_yaxes(title_text="cosine similarity (−1 … 1)", range=[-min(1.05, span), min(1.05, span)])
    fig.update_xaxes(title_text=LAYER_AXIS)
    d = (results.model or {}).get("d_model")
    style(fig, f"Persona direction vs refusal direction, per layer — {model_label(results)}",
          f"d_model = {d} · hollow points lie inside the random null band · persona direction: "
          f"{(results.persona_direction or {}).get('method', 'n/a')}")
    return legend_below(fig, -0.16, 110)


CAPTION = """
    Cosine similarity between the persona and refusal directions at each layer; the grey band is where 95% of
    random directions fall. Points inside the band mean the persona is not simply “minus refusal”: it suppresses
    refusal through a different direction, which is what makes gating (rather than cancellation) a meaningful
    question.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="cosine", title="Persona direction vs refusal direction", size=(1000, 560), draw=cosine_figure,
                stage="cosines", order=80, caption=prose(CAPTION)))
