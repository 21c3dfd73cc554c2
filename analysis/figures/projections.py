"""Computed vs expressed: projection on each layer's refusal direction."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import (
    COLORS, LAYER_AXIS, band, empty, layers_axis, model_label, persona_layer, persona_marker, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite, fmt
from persona_refusal.results import GatingResults

__all__ = ["projections_figure"]


def projections_figure(results: dict) -> go.Figure:
    """Is refusal still *computed* under the persona, even when it is not *expressed*?

    At every layer, the last prompt token's residual is projected onto that layer's own
    refusal direction (unit diff-in-means, harmful − harmless). Lines are means over
    prompts with normal 95% bands: harmful prompts without steering (blue), harmful
    prompts with persona steering (vermillion) and harmless prompts (green). The two
    harmful lines coincide before the persona layer by construction. If, after it, the
    vermillion line stays near the blue one while the refusal rate collapses, the model
    still represents "this is harmful" and the persona blocks its expression; if it falls
    to the green line, the persona erased the representation itself.
    """
    results = GatingResults.of(results)
    pr = results.projections or {}
    layers = list(pr.get("layers") or [])
    P = persona_layer(results)
    fig = go.Figure()
    if not layers:
        return empty(fig, "no projections in these results", "Computed vs expressed: no data")
    # the unsteered harmful line is drawn wider underneath, so it shows around the persona
    # line where the two coincide (every layer before the persona layer)
    keys = (("harmful_baseline", "harmful, no steering", COLORS["baseline"], "solid", 5),
            ("harmful_persona", "harmful, persona steering", COLORS["persona"], "solid", 2),
            ("harmless_baseline", "harmless, no steering", COLORS["harmless"], "dash", 2.5))
    for key, name, color, dash, width in keys:
        recs = pr.get(key) or []
        if not recs:
            continue
        m = [r.get("mean") if r else None for r in recs]
        lo = [(r.get("ci") or [None, None])[0] if r else None for r in recs]
        hi = [(r.get("ci") or [None, None])[1] if r else None for r in recs]
        band(fig, layers, lo, hi, color, key, alpha=0.14)
        fig.add_trace(go.Scatter(
            x=layers, y=m, mode="lines+markers", name=name, legendgroup=key, line=dict(color=color, width=width, dash=dash),
            marker=dict(size=6), customdata=[[fmt(a, ".3g"), fmt(b, ".3g"), (r or {}).get("n")] for a, b, r in
                                             zip(lo, hi, recs)],
            hovertemplate=("layer %{x}<br>mean projection %{y:.3g} [%{customdata[0]}, %{customdata[1]}]"
                           "<br>n = %{customdata[2]}<extra>" + name + "</extra>")))
    rl = (results.refusal_direction or {}).get("layer")
    if finite(rl):
        fig.add_vline(x=rl, line=dict(color=COLORS["baseline"], width=1, dash="dot"),
                      annotation=dict(text=f"selected refusal direction (layer {rl})", font=dict(size=11,
                                      color=COLORS["baseline"])),
                      annotation_position="bottom left" if rl > (min(layers) + max(layers)) / 2 else "bottom right")
    persona_marker(fig, P)
    layers_axis(fig, layers)
    fig.update_xaxes(title_text=LAYER_AXIS)
    fig.update_yaxes(title_text="projection on the layer's refusal direction<br><sup>residual-stream units, "
                                "last prompt token</sup>")
    n = next((r.get("n") for r in (pr.get("harmful_baseline") or []) if r), None)
    nh = next((r.get("n") for r in (pr.get("harmless_baseline") or []) if r), None)
    style(fig, f"Computed vs expressed: refusal-direction projection per layer — {model_label(results)}",
          f"harmful: n = {n} sweep prompts · harmless: n = {nh} · direction: {pr.get('direction', 'n/a')} · "
          f"bands: 95% CI of the mean")
    fig.update_layout(legend=dict(x=0.01, xanchor="left", y=0.99, yanchor="top"))
    return fig


CAPTION = """
    At each layer, how far the last prompt token lies along that layer's refusal direction. Before the persona
    layer ({P}) the two harmful lines coincide by construction; after it, a persona line that stays near the
    unsteered harmful line means the model still <i>computes</i> that the request is harmful even though it no
    longer <i>expresses</i> refusal, while a line that falls to the harmless level means the persona erased the
    representation.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="projections", title="Computed vs expressed", size=(1000, 640), draw=projections_figure,
                stage="projections", order=50, caption=prose(CAPTION)))
