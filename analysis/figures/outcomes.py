"""Judged replies to the evaluation prompts, baseline vs compliant persona."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import (
    COLORS, PAPER_NOTE, error_bars, legend_below, model_label, no_data, persona_layer, rate_pct, style, persona_alpha,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import fmt
from persona_refusal.results import GatingResults

__all__ = ["outcomes_figure"]


def outcomes_figure(results: dict) -> go.Figure:
    """What the replies look like with and without the compliant persona.

    Replies to the evaluation harmful prompts, generated and judged: the share refused,
    complied with and degenerate, baseline (blue) vs persona steering (vermillion), with
    Wilson 95% error bars. The last pair is the cheap proxy the sweeps use (greedy first
    token is a refusal token). The box quotes the paper's numbers on a much larger model
    for comparison: small models often refuse less at baseline, so compare the *drop*, not
    the levels.
    """
    results = GatingResults.of(results)
    cats = [("refusal", "refused"), ("compliance", "complied"), ("degenerate", "degenerate"),
            ("first_token", "first token is a refusal token")]
    fig = go.Figure()
    n = None
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona steering")):
        rec = getattr(results, key) or {}
        rr = [rate_pct(rec.get(c)) for c, _ in cats]
        n = n or next((r[4] for r in rr if r[4]), None)
        y = [r[0] for r in rr]
        fig.add_trace(go.Bar(
            x=[label for _, label in cats], y=y, name=name, marker_color=COLORS[key],
            error_y=error_bars(y, [r[1] for r in rr], [r[2] for r in rr]) | dict(color="#333"), offsetgroup=key,
            customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
            hovertemplate=("%{x}<br>%{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           "(%{customdata[2]}/%{customdata[3]})<extra>" + name + "</extra>")))
        # value labels just above each error bar (a grouped scatter aligns with its bar)
        fig.add_trace(go.Scatter(
            x=[label for _, label in cats], y=[r[2] if r[2] is not None else r[0] for r in rr], mode="text",
            text=[f"{v:.0f}%" if v is not None else "" for v in y], textposition="top center",
            textfont=dict(size=12, color=COLORS[key]), offsetgroup=key, showlegend=False, hoverinfo="skip",
            cliponaxis=False))
    if not any(t.type == "bar" and t.y and any(v is not None for v in t.y) for t in fig.data):
        no_data(fig, "no baseline/persona evaluation in these results")
    fig.add_annotation(xref="paper", yref="paper", x=1.0, y=-0.15, xanchor="right", yanchor="top", align="left",
                       showarrow=False, bgcolor="rgba(255,255,255,0.9)", bordercolor="#bbb", borderwidth=1,
                       borderpad=6, font=dict(size=12),
                       text=f"For comparison — {PAPER_NOTE.replace(': ', ':<br>', 1)}")
    fig.add_shape(type="line", xref="x", yref="paper", x0=2.5, x1=2.5, y0=0, y1=1,
                  line=dict(color="#bbb", width=1, dash="dot"))
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.06, scattermode="group", scattergap=0.25)
    fig.update_yaxes(title_text="share of harmful prompts (%)", range=[0, 108])
    fig.update_xaxes(title_text="judged outcome of the generated reply   |   first-token proxy")
    style(fig, f"Baseline vs compliant persona on harmful prompts — {model_label(results)}",
          f"n = {n} evaluation prompts · persona α = {fmt(persona_alpha(results), 'g')} at layer "
          f"{persona_layer(results)} · judge: {results.get('judge', 'n/a')} · error bars: Wilson 95%",
          legend_bottom=False)
    return legend_below(fig, -0.15, 120)


CAPTION = """
    Full replies to the {n_eval} evaluation harmful prompts, judged as refused, complied or degenerate, without
    and with persona steering. The last pair is the first-token proxy the sweeps use (agreement with the judged
    refusal: {agree_b} baseline, {agree_p} persona). Compare the size of the drop with the paper's ({paper}),
    not the levels: small models refuse less to begin with.
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="outcomes", title="Baseline vs compliant persona", size=(1000, 600), draw=outcomes_figure,
                stage="eval", order=20, caption=prose(CAPTION).replace("{paper}", PAPER_NOTE)))
