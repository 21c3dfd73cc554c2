"""The re-add cells under other persona and re-add strengths, beside their degenerate share."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import COLORS, empty, error_bars, legend_below, model_label, style
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import GatingResults

__all__ = ["sensitivity_figure"]

_CELL_COLOR = {"early": "#56B4E9", "late": "#E69F00", "paired": "#7B2D8E"}


def sensitivity_figure(results: dict) -> go.Figure:
    """Do the gating verdicts hold at other strengths?

    One panel per persona strength (a multiple of the calibrated α). Top: restoration of
    the gap between the baseline and the persona at that strength, per cell, against the
    re-add strength as a multiple of α (β/α); paired bootstrap 95% intervals. Filled
    markers: coherent rows (degenerate share at most the calibration's bar); hollow
    markers: rows whose replies are mostly broken, where no restoration can be read.
    Bottom: the degenerate share of each row.
    """
    se = GatingResults.of(results).sensitivity or {}
    mults = list(se.get("alpha_multipliers") or [])
    if not se.get("rows") or not mults:
        return empty(go.Figure(), "no sensitivity stage in these results", "Sensitivity: no data")
    fig = make_subplots(rows=2, cols=len(mults), shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.1,
                        subplot_titles=[f"persona at {m:g}·α" for m in mults])
    main = se.get("judge")
    for j, m in enumerate(mults, start=1):
        rows = [r for r in se.rows if r.m == m]
        for cell in dict.fromkeys(r.cell for r in rows):
            cr = sorted((r for r in rows if r.cell == cell), key=lambda r: r.ratio)
            color = _CELL_COLOR.get(cell, COLORS["gating"])
            rest = [(r.get(main) or {}) for r in cr]
            y = [x.get("restoration") if finite(x.get("restoration")) else None for x in rest]
            ci = [x.get("restoration_ci") or [None, None] for x in rest]
            fig.add_trace(go.Scatter(
                x=[r.ratio for r in cr], y=y, mode="lines+markers", name=f"{cell} cell", legendgroup=cell,
                showlegend=j == 1, line=dict(color=color, width=1.5),
                marker=dict(size=10, color=[color if r.coherent else "white" for r in cr],
                            line=dict(color=color, width=2)),
                error_y=error_bars(y, [c[0] for c in ci], [c[1] for c in ci]) | dict(color=color),
                customdata=[[r.beta, 100 * (x.get("degenerate") or {}).get("rate", 0)] for r, x in zip(cr, rest)],
                hovertemplate=(f"{cell} cell<br>β/α %{{x:g}} (β = %{{customdata[0]:g}})<br>restoration %{{y:.2f}}"
                               "<br>degenerate %{customdata[1]:.0f}%<extra></extra>")), row=1, col=j)
            fig.add_trace(go.Scatter(
                x=[r.ratio for r in cr], y=[100 * (x.get("degenerate") or {}).get("rate", 0) for x in rest],
                mode="lines+markers", legendgroup=cell, showlegend=False, line=dict(color=color, width=1, dash="dot"),
                marker=dict(size=6, color=color),
                hovertemplate=f"{cell} cell<br>β/α %{{x:g}}<br>degenerate %{{y:.0f}}%<extra></extra>"), row=2, col=j)
        fig.add_hline(y=0, line=dict(color="#bbb", width=1, dash="dot"), row=1, col=j)
        fig.add_hline(y=100 * se.get("max_degenerate", 0.25), line=dict(color=COLORS["degenerate"], width=1, dash="dash"),
                      row=2, col=j)
        ratios = sorted({r.ratio for r in rows})
        for row in (1, 2):  # only the measured ratios are marked (a log axis' minor labels read as data)
            fig.update_xaxes(type="log", tickvals=ratios, ticktext=[f"{x:.2g}" for x in ratios], row=row, col=j)
        fig.update_xaxes(title_text="re-add strength β / α", row=2, col=j)
        fig.update_yaxes(range=[-3, 103], row=2, col=j)
    fig.update_yaxes(title_text="restoration", row=1, col=1)
    fig.update_yaxes(title_text="degenerate (%)", row=2, col=1)
    style(fig, f"Gating at other strengths — {model_label(results)}",
          f"n = {se.get('n')} evaluation prompts · calibrated α = {se.get('alpha'):g} · {main} judge · hollow: "
          f"more than {100 * se.get('max_degenerate', 0.25):.0f}% degenerate replies (not readable)")
    return legend_below(fig, -0.16, 170)


CAPTION = """
    Restoration by each re-add cell at other persona strengths and re-add strengths (β/α, the paper's 2/3 and 0.8
    among them), with the early cell also at small β; hollow markers are rows whose replies are mostly degenerate.
"""
"""The report's caption."""

register(Figure(name="sensitivity", title="Gating at other strengths", size=(1100, 720),
                draw=sensitivity_figure, stage="sensitivity", order=16, caption=prose(CAPTION),
                needs=lambda r: bool((GatingResults.of(r).sensitivity or {}).get("rows"))))
