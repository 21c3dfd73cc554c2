"""Activation patching from the unsteered into the persona-steered run."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, LAYER_AXIS, clip_band, clipped_points, empty, error_bars, layers_axis, model_label, persona_layer,
    persona_marker, rgba, shades_of, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import ci_text, finite, fmt, percent
from persona_refusal.results import GatingResults

__all__ = ["patching_figure"]


def _patch_metric(results: dict) -> tuple[str, str]:
    rows = GatingResults.of(results).patching or []
    if any(finite(r.get("restoration")) for r in rows):
        return "restoration", "of the refusal rate"
    return "score_restoration", "of the first-token refusal log-odds"


def patching_figure(results: dict) -> go.Figure:
    """Which layers and positions carry what the persona changes?

    Activations of the unsteered run are patched into the persona-steered run at one
    layer (``resid_pre``) and the post-instruction positions. The normalized effect is
    the restoration ``(patched − persona)/(baseline − persona)``: 1 means patching that
    site alone undoes the persona (refusal is back), 0 means it changes nothing. Left:
    all post-instruction positions patched together, per layer, with bootstrap 95%
    intervals. Right: each position patched alone, for a few layers (one line each).
    The effect is computed on the refusal rate when it is defined, otherwise on the mean
    first-token refusal log-odds (the axis says which).
    """
    results = GatingResults.of(results)
    rows = list(results.patching or [])
    P = persona_layer(results)
    metric, metric_text = _patch_metric(results)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.1,
                        subplot_titles=("all post-instruction positions patched", "one position patched at a time"))
    if not rows:
        return empty(fig, "no patching in these results", "Activation patching: no data")
    n_post = max(len(r.positions) for r in rows)
    full = sorted((r for r in rows if len(r.positions) == n_post and n_post > 1), key=lambda r: r.layer)
    single = [r for r in rows if len(r.positions) == 1]
    if n_post == 1:  # only one post-instruction position: both views coincide
        full, single = sorted(rows, key=lambda r: r.layer), rows
    vals = [r.get(metric) for r in rows] + [c for r in rows for c in (r.get(metric + "_ci") or [])]
    rng = clip_band(vals, lo=-0.1, hi=1.1)
    for c in (1, 2):
        fig.add_hline(y=0, line=dict(color=COLORS["persona"], width=1, dash="dot"), row=1, col=c,
                      exclude_empty_subplots=False)
        fig.add_hline(y=1, line=dict(color=COLORS["baseline"], width=1, dash="dot"), row=1, col=c,
                      exclude_empty_subplots=False)

    def add(x, recs, name, color, col, dash="solid", showlegend=True, group=None):
        pt = [r.get(metric) for r in recs]
        ci = [(r.get(metric + "_ci") or [None, None]) for r in recs]
        ys, sym = clipped_points(pt, rng)
        clo = [min(max(c[0], rng[0]), rng[1]) if finite(c[0]) else None for c in ci]
        chi = [min(max(c[1], rng[0]), rng[1]) if finite(c[1]) else None for c in ci]
        fig.add_trace(go.Scatter(
            x=x, y=ys, mode="lines+markers", name=name, legendgroup=group or name, showlegend=showlegend,
            line=dict(color=color, width=2, dash=dash), marker=dict(size=7, symbol=sym),
            error_y=error_bars(ys, clo, chi) | dict(color=rgba(color, 0.6)),
            customdata=[[fmt(p, ".2f"), ci_text(*c), percent(r.get("refusal_rate")), r.layer,
                         ",".join(str(p) for p in r.positions)] for p, c, r in zip(pt, ci, recs)],
            hovertemplate=("layer %{customdata[3]}, positions %{customdata[4]}<br>effect %{customdata[0]} "
                           "%{customdata[1]}<br>refusal rate %{customdata[2]:.1f}%<extra>" + name + "</extra>")),
            row=1, col=col)

    if full:
        add([r.layer for r in full], full, "all positions, per layer", COLORS["gating"], 1)
    single_layers = sorted({r.layer for r in single})
    shades = shades_of(COLORS["baseline"], len(single_layers))
    for l, color in zip(single_layers, shades):
        recs = sorted((r for r in single if r.layer == l), key=lambda r: r.positions[0])
        add([r.positions[0] for r in recs], recs, f"one position, layer {l}", color, 2)
    if full:
        persona_marker(fig, P, rows=[1], col=1, label=False)
        layers_axis(fig, [r.layer for r in full], row=1, col=1)
    positions = sorted({r.positions[0] for r in single})
    if positions:
        fig.update_xaxes(tickmode="array", tickvals=positions, range=[min(positions) - 0.5, max(positions) + 0.5],
                         row=1, col=2)
    fig.update_yaxes(range=list(rng))
    fig.update_yaxes(title_text=f"normalized patching effect<br><sup>restoration {metric_text}: "
                                "0 = persona, 1 = baseline</sup>", row=1, col=1)
    fig.update_xaxes(title_text=LAYER_AXIS + " patched", row=1, col=1)
    fig.update_xaxes(title_text="patched position (from the end; −1 = last prompt token)", row=1, col=2)
    n = next((r.get("n") for r in rows), None)
    style(fig, f"Activation patching: unsteered → persona-steered run — {model_label(results)}",
          f"n = {n} sweep prompts · effect {metric_text} · error bars: paired bootstrap 95% · triangles: "
          f"outside the axis (true value in hover)", legend_bottom=True)
    fig.update_layout(legend=dict(y=-0.17))
    return fig


CAPTION = """
    Activations from the unsteered run are copied into the persona-steered run at one layer (left: all
    post-instruction positions at once) or one position (right). The normalized effect is 1 when that single
    patch restores refusal fully and 0 when it changes nothing, so it shows where, after the persona is
    injected, the information that decides refusal lives.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="patching", title="Activation patching", size=(1000, 600), draw=patching_figure, stage="patching",
                order=70, caption=prose(CAPTION)))
