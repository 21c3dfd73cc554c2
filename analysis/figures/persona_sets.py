"""Each persona set's direction against the refusal direction, per layer."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, LAYER_AXIS, empty, layers_axis, legend_below, model_label, persona_layer, persona_marker, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.results import GatingResults

__all__ = ["persona_sets_figure"]

_SET_COLORS = ("#7B2D8E", "#E69F00", "#009E73", "#56B4E9", "#CC79A7")


def persona_sets_figure(results: dict) -> go.Figure:
    """How much of each persona direction is the refusal direction?

    Top: cosine between each persona set's compliant − refuser direction and the study's
    refusal direction, per layer (dashed: with that layer's own diff-in-means refusal
    direction). Bottom: the share of the persona direction's squared norm that lies along
    the refusal direction (cos²). A persona contrast whose refuser prompts script apology
    words is expected to lean further toward refusal than one that only describes
    characters.
    """
    results = GatingResults.of(results)
    ps = (results.persona_sets or {}).get("sets") or {}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.08,
                        subplot_titles=("cosine with the refusal direction", "share along the refusal direction (cos²)"))
    if not ps:
        return empty(fig, "no persona sets in these results", "Persona sets vs refusal: no data")
    layers: list[int] = []
    for (name, rec), color in zip(ps.items(), _SET_COLORS):
        layers = rec.layers
        label = name if len(name) <= 24 else "…" + name[-23:]
        fig.add_trace(go.Scatter(x=layers, y=rec.cosine_refusal, mode="lines+markers", name=f"{label} persona set",
                                 legendgroup=name, line=dict(color=color, width=2.5), marker=dict(size=6),
                                 hovertemplate="layer %{x}<br>cosine %{y:.3f}<extra>" + label + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=layers, y=rec.cosine_layer_refusal, mode="lines", legendgroup=name,
                                 name=f"{label}: vs each layer's own refusal direction",
                                 line=dict(color=color, width=1.2, dash="dash"),
                                 hovertemplate="layer %{x}<br>cosine %{y:.3f}<extra>" + label + ", per layer</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=layers, y=rec.share_along_refusal, mode="lines+markers", showlegend=False,
                                 legendgroup=name, line=dict(color=color, width=2), marker=dict(size=5),
                                 hovertemplate="layer %{x}<br>cos² %{y:.3f}<extra>" + label + "</extra>"), row=2, col=1)
    fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=1)
    rl = (results.persona_sets or {}).get("refusal_layer")
    if rl is not None:
        fig.add_vline(x=rl, line=dict(color=COLORS["baseline"], width=1, dash="dot"), row="all", col=1,
                      exclude_empty_subplots=False)
    persona_marker(fig, persona_layer(results), rows=[1, 2])
    layers_axis(fig, layers, row=2, col=1)
    fig.update_yaxes(title_text="cosine (−1 … 1)", row=1, col=1)
    fig.update_yaxes(title_text="cos²", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text=LAYER_AXIS, row=2, col=1)
    style(fig, f"Persona sets vs the refusal direction — {model_label(results)}",
          f"dotted line: the refusal direction's layer {rl} · dashed lines: each layer's own diff-in-means refusal "
          "direction")
    return legend_below(fig, -0.12, 140)


CAPTION = """
    The persona direction of each persona set against the refusal direction: a contrast built on scripted
    apologies should sit closer to refusal than one built on described characters.
"""

register(Figure(name="persona_sets", title="Persona sets vs the refusal direction", size=(1000, 700),
                draw=persona_sets_figure, stage="persona_sets", order=85, caption=prose(CAPTION),
                needs=lambda r: bool((GatingResults.of(r).persona_sets or {}).get("sets"))))
