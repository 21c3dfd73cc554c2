"""The gating sweep judged from generated long replies (the paper's measure)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, LAYER_AXIS, RATE_AXIS, empty, error_bars, hline_trace, layers_axis, legend_below, model_label,
    persona_marker, rate_pct, shades_of, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import GatingResults

__all__ = ["gating_judged_figure"]

_JUDGE_DASH = {"lenient": "solid", "strict": "dash"}
_CELL_SYMBOL = {"early": "diamond", "late": "square", "paired": "star"}


def _pct_rows(rows: list[dict], judge: str) -> list[tuple]:
    return [rate_pct((r.get(judge) or {}).get("refusal")) for r in rows]


def _rest(r: dict, judge: str) -> tuple:
    row = r.get(judge) or {}
    p, ci = row.get("restoration"), row.get("restoration_ci") or [None, None]
    return p, ci[0], ci[1]


def _layer_traces(fig: go.Figure, rows: list[dict], judges: list[str], main: str) -> None:
    x = [r.layer for r in rows]
    for judge in judges:
        rr = _pct_rows(rows, judge)
        y = [r[0] for r in rr]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=f"persona + refusal re-added, judged ({judge})",
            line=dict(color=COLORS["gating"], width=2.5 if judge == main else 1.5, dash=_JUDGE_DASH.get(judge, "dot")),
            marker=dict(size=8 if judge == main else 5),
            error_y=(error_bars(y, [r[1] for r in rr], [r[2] for r in rr]) | dict(color=COLORS["gating"]))
            if judge == main else None,
            customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
            hovertemplate=("re-add at layer %{x}<br>refusal %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           f"(%{{customdata[2]}}/%{{customdata[3]}})<extra>{judge} judge</extra>")), row=1, col=1)
    ft = [rate_pct(r.get("first_token")) for r in rows]
    fig.add_trace(go.Scatter(
        x=x, y=[r[0] for r in ft], mode="lines+markers", name="same replies, first token (fast proxy)",
        line=dict(color=COLORS["gating"], width=1, dash="dot"), marker=dict(size=4, symbol="circle-open"),
        hovertemplate="re-add at layer %{x}<br>first-token refusal %{y:.1f}%<extra>proxy</extra>"), row=1, col=1)
    p = [_rest(r, main) for r in rows]
    y = [v[0] for v in p]
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="lines+markers", name=f"restoration ({main} judge)", showlegend=False,
        line=dict(color=COLORS["gating"], width=2), marker=dict(size=7),
        error_y=error_bars(y, [v[1] for v in p], [v[2] for v in p]) | dict(color=COLORS["gating"]),
        hovertemplate="re-add at layer %{x}<br>restoration %{y:.2f}<extra></extra>"), row=2, col=1)


def _cell_traces(fig: go.Figure, cells: list[dict], control: list[dict], main: str) -> None:
    betas = sorted({c.beta for c in cells})
    shades = dict(zip(betas, shades_of(COLORS["confirm"], len(betas))))
    for c in cells:
        x = max(c.layers)
        r = rate_pct((c.get(main) or {}).get("refusal"))
        label = f"{c.cell} cell ({'+'.join(map(str, c.layers))}), β = {c.beta:g}"
        sym = _CELL_SYMBOL.get(c.cell, "triangle-up")
        fig.add_trace(go.Scatter(
            x=[x], y=[r[0]], mode="markers", name=label, legendgroup="cells",
            marker=dict(symbol=sym, size=13, color=shades[c.beta], line=dict(color="white", width=1)),
            error_y=error_bars([r[0]], [r[1]], [r[2]]) | dict(color=shades[c.beta]),
            hovertemplate=f"{label}<br>refusal %{{y:.1f}}% [{r[1] or 0:.1f}, {r[2] or 0:.1f}] ({r[3]}/{r[4]})"
                          f"<extra>{main} judge</extra>"), row=1, col=1)
        p, lo, hi = _rest(c, main)
        if finite(p):
            fig.add_trace(go.Scatter(
                x=[x], y=[p], mode="markers", showlegend=False, legendgroup="cells",
                marker=dict(symbol=sym, size=12, color=shades[c.beta]),
                error_y=error_bars([p], [lo], [hi]) | dict(color=shades[c.beta]),
                hovertemplate=f"{label}<br>restoration %{{y:.2f}}<extra></extra>"), row=2, col=1)
    for c in control:
        r = rate_pct((c.get(main) or {}).get("refusal"))
        label = f"no persona: refusal re-added at {'+'.join(map(str, c.layers))} ({c.cell}), β = {c.beta:g}"
        fig.add_trace(go.Scatter(
            x=[max(c.layers)], y=[r[0]], mode="markers", name=label, legendgroup="control",
            marker=dict(symbol=_CELL_SYMBOL.get(c.cell, "triangle-up") + "-open", size=12, color=COLORS["control"],
                        line=dict(width=2)),
            hovertemplate=f"{label}<br>refusal %{{y:.1f}}% ({r[3]}/{r[4]})<extra>control</extra>"), row=1, col=1)


def _harmless_traces(fig: go.Figure, ch: dict, main: str) -> None:
    """The benign control: the re-adds without the persona on harmless prompts (green)."""
    rows = sorted(ch.get("layers") or [], key=lambda r: r.layer)
    if rows:
        rr = _pct_rows(rows, main)
        y = [r[0] for r in rr]
        fig.add_trace(go.Scatter(
            x=[r.layer for r in rows], y=y, mode="lines+markers", legendgroup="harmless",
            name=f"no persona, harmless prompts: refusal re-added (β₀, {main})",
            line=dict(color=COLORS["harmless"], width=1.5, dash="dot"), marker=dict(size=5, symbol="circle-open"),
            customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
            hovertemplate=("no persona, harmless prompts, re-add at layer %{x}<br>refusal %{y:.1f}% "
                           "[%{customdata[0]:.1f}, %{customdata[1]:.1f}] (%{customdata[2]}/%{customdata[3]})"
                           "<extra>benign control</extra>")), row=1, col=1)
    for c in ch.get("cells") or []:
        r = rate_pct((c.get(main) or {}).get("refusal"))
        label = (f"no persona, harmless prompts: re-added at {'+'.join(map(str, c.layers))} ({c.cell}), "
                 f"β = {c.beta:g}")
        fig.add_trace(go.Scatter(
            x=[max(c.layers) + 0.25], y=[r[0]], mode="markers", name=label, legendgroup="harmless",
            showlegend=c.beta == ch.get("beta0"),
            marker=dict(symbol=_CELL_SYMBOL.get(c.cell, "triangle-up") + "-open", size=11, color=COLORS["harmless"],
                        line=dict(width=2)),
            error_y=error_bars([r[0]], [r[1]], [r[2]]) | dict(color=COLORS["harmless"]),
            hovertemplate=f"{label}<br>refusal %{{y:.1f}}% ({r[3]}/{r[4]})<extra>benign control</extra>"),
            row=1, col=1)


def gating_judged_figure(results: dict) -> go.Figure:
    """Does re-adding refusal under the persona bring it back — judged from long replies?

    Top: with the compliant persona steered in, the refusal direction is re-added at one
    layer (x) at β₀, or in the paper's cells (symbols at their last layer; the paired
    late cell re-adds at two layers together), and the generated replies are judged by
    the lenient (paper's) and the strict judge; Wilson 95% error bars. The first token of
    the same replies is the fast proxy. Horizontal lines: the unsteered baseline and
    persona alone. Hollow grey symbols: the same cells without the persona (control).
    Bottom: restoration of the persona → baseline gap (0: none, 1: all) with paired
    bootstrap 95% intervals. Left of the dashed line the re-add comes before the persona
    injection ("early"), right of it after ("late").
    """
    results = GatingResults.of(results)
    gj = results.gating_judged or {}
    rows = sorted(gj.get("layers") or [], key=lambda r: r.layer)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.08,
                        subplot_titles=("refusal rate of generated replies (judged)", "restoration of refusal"))
    if not rows and not gj.get("cell_rows"):
        return empty(fig, "no judged gating sweep in these results", "Judged gating sweep: no data")
    judges, main = list(gj.get("judges") or []), gj.get("judge")
    n_layers = (results.model or {}).get("n_layers") or (max(r.layer for r in rows) + 1)
    P = gj.get("persona_layer")
    x_range = (-0.5, n_layers - 0.5)
    if finite(P):
        fig.add_vrect(x0=x_range[0], x1=P - 0.5, fillcolor=COLORS["early"], line_width=0, layer="below", row="all",
                      col=1, exclude_empty_subplots=False)
        fig.add_vrect(x0=P - 0.5, x1=x_range[1], fillcolor=COLORS["late"], line_width=0, layer="below", row="all",
                      col=1, exclude_empty_subplots=False)
    hline_trace(fig, x_range, (gj.get("baseline") or {}).get(main, {}).get("refusal"),
                f"baseline, no steering ({main})", COLORS["baseline"], row=1)
    hline_trace(fig, x_range, (gj.get("persona") or {}).get(main, {}).get("refusal"),
                f"persona alone ({main})", COLORS["persona"], row=1)
    if rows:
        _layer_traces(fig, rows, judges, main)
    _cell_traces(fig, gj.get("cell_rows") or [], gj.get("control") or [], main)
    if gj.get("control_harmless"):
        _harmless_traces(fig, gj.control_harmless, main)
    for y in (0.0, 1.0):
        fig.add_hline(y=y, line=dict(color="#bbb", width=1, dash="dot"), row=2, col=1)
    persona_marker(fig, P, rows=[1, 2])
    layers_axis(fig, list(range(n_layers)), row=2, col=1)
    fig.update_yaxes(title_text=RATE_AXIS, range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="restoration", row=2, col=1)
    fig.update_xaxes(title_text=LAYER_AXIS + " where refusal is re-added", row=2, col=1)
    alpha, b0 = gj.get("alpha"), gj.get("beta0")
    agree = (gj.get("agreement") or {}).get("first_token_vs_judge")
    style(fig, f"Refusal re-added under the persona, judged replies — {model_label(results)}",
          f"n = {gj.get('n')} evaluation prompts · {gj.get('max_new_tokens')}-token replies · persona α = "
          f"{alpha if alpha is None else f'{alpha:g}'} at layer {P} · per-layer β₀ = "
          f"{b0 if b0 is None else f'{b0:g}'} · first token agrees with the {main} judge on "
          f"{'n/a' if agree is None else f'{100 * agree:.0f}%'} of replies")
    return legend_below(fig, -0.1, 190)


CAPTION = """
    The paper's measurement: generated replies of {judged_tokens} tokens judged for refusal, with the persona
    steered in and the refusal direction re-added at each layer or in the paper's early, late and paired late
    cells. Gating predicts little restoration left of the persona layer and more right of it.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="gating_judged", title="Judged gating sweep (long replies)", size=(1100, 820),
                draw=gating_judged_figure, stage="gating_judged", order=15, caption=prose(CAPTION),
                needs=lambda r: bool(GatingResults.of(r).gating_judged)))
