"""The persona strength α calibrated on the val prompts."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import (
    COLORS, RATE_AXIS, empty, error_bars, legend_below, model_label, rate_pct, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.results import GatingResults

__all__ = ["calibration_figure"]


def calibration_figure(results: dict) -> go.Figure:
    """Which α did the val split choose, and why?

    Each α of the grid tried (smallest first, stopping at the first that passes): the
    judged refusal rate of the harmful val prompts under persona steering, and the
    share of degenerate replies to the harmless val prompts, with Wilson 95% error bars.
    Dotted lines: the target refusal and the degenerate ceiling. The evaluation prompts
    never enter this choice.
    """
    cal = GatingResults.of(results).calibration or {}
    rows = cal.get("rows") or []
    fig = go.Figure()
    if not rows:
        return empty(fig, "α was not calibrated in this run", "α calibration: no data")
    rule = cal.get("rule") or {}
    x = [r["alpha"] for r in rows]
    for key, name, color in (("refusal", "harmful val: judged refusal", COLORS["persona"]),
                             ("harmless_degenerate", "harmless val: degenerate replies", COLORS["degenerate"])):
        rr = [rate_pct(r.get(key)) for r in rows]
        y = [v[0] for v in rr]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line=dict(color=color, width=2.5),
                                 marker=dict(size=9), error_y=error_bars(y, [v[1] for v in rr], [v[2] for v in rr])
                                 | dict(color=color), customdata=[[v[3], v[4]] for v in rr],
                                 hovertemplate="α = %{x}<br>%{y:.1f}% (%{customdata[0]}/%{customdata[1]})<extra>"
                                               + name + "</extra>"))
    for key, color, label in (("target", COLORS["persona"], "target"), ("max_degenerate", COLORS["degenerate"],
                                                                           "degenerate ceiling")):
        if rule.get(key) is not None:
            fig.add_hline(y=100 * rule[key], line=dict(color=color, width=1, dash="dot"),
                          annotation=dict(text=f"{label} {100 * rule[key]:.0f}%", font=dict(size=11)))
    fig.add_vline(x=cal.get("alpha"), line=dict(color="#444", width=1.5, dash="dash"),
                  annotation=dict(text=f"chosen α = {cal.get('alpha'):g}", font=dict(size=12)))
    fig.update_yaxes(title_text=RATE_AXIS.replace("refusal rate", "share of val replies"), range=[-3, 103])
    fig.update_xaxes(title_text="persona strength α (× common norm s)")
    style(fig, f"α calibrated on the val prompts — {model_label(results)}",
          f"n = {rule.get('n_harmful')} harmful + {rule.get('n_harmless')} harmless val prompts · "
          f"{rule.get('max_new_tokens')}-token replies · {rule.get('judge')} judge · {cal.get('reason')}")
    return legend_below(fig, -0.14, 110)


CAPTION = """
    The persona strength is chosen on the val split only: the smallest α of the grid whose judged val refusal
    meets the target while harmless val replies stay coherent. The study uses α = {alpha}.
"""

register(Figure(name="calibration", title="α calibrated on val", size=(1000, 560), draw=calibration_figure,
                stage="calibrate", order=28, caption=prose(CAPTION),
                needs=lambda r: bool((GatingResults.of(r).calibration or {}).get("calibrated"))))
