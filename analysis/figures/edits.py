"""Ablation vs ACE vs addition on the test split (the refusal study's ``edits`` stage)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import COLORS, empty, legend_below, model_label, rate_pct, replies_note, shade, style
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import RefusalResults

__all__ = ["edits_figure", "EDIT_NAMES", "EDIT_COLORS"]

EDIT_NAMES = {"none": "unedited", "ablate": "ablation", "ablate_layers": "ablation, per layer", "ace0": "ACE α=0",
              "ace0_layers": "ACE α=0, per layer", "add": "addition", "ace1": "ACE α=1",
              "ace1_layers": "ACE α=1, per layer"}
"""Short names of the edits (axis labels)."""
EDIT_COLORS = {"none": COLORS["baseline"], "ablate": COLORS["gating"], "ablate_layers": shade(COLORS["gating"], 0.45),
               "ace0": COLORS["harmless"], "ace0_layers": shade(COLORS["harmless"], 0.45), "add": COLORS["persona"],
               "ace1": COLORS["chosen"], "ace1_layers": shade(COLORS["chosen"], 0.45)}
"""One colour per edit: blue unedited, purple ablation, green ACE erase, vermillion addition, orange ACE induce."""
PANELS = (("harmful", "harmful test prompts: refusal (erase)"), ("harmless", "harmless test prompts: refusal (induce)"),
          ("borderline", "borderline test prompts: refusal (over-refusal)"))


def _name(edit: str) -> str:
    return EDIT_NAMES.get(edit, f"ablation, {edit[5:]} (other rule)")


def edits_figure(results: dict) -> go.Figure:
    """Which edit does what, on the test split.

    Three panels of judged rates (Wilson 95% error bars): refusal of the harmful prompts
    under the erasing edits, of the harmless prompts under the inducing edits, of the
    borderline prompts (safe requests that sound unsafe) under every edit; the lighter
    bar beside each is the share of degenerate replies. The fourth panel: the mean KL of
    each edit's next-token distribution on the harmless prompts (bootstrap 95% bars, log
    scale).
    """
    results = RefusalResults.of(results)
    ed = results.edits or {}
    conds = ed.get("conditions") or []
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.2, horizontal_spacing=0.08,
                        subplot_titles=[t for _, t in PANELS] + ["KL on harmless test prompts (nats)"])
    title = f"Ablation vs ACE vs addition on the test split — {model_label(results)}"
    if not conds:
        return empty(go.Figure(), "no edits in these results", title)
    for i, (s, _) in enumerate(PANELS):
        row, col = divmod(i, 2)
        rows = [c for c in conds if c.get("set") == s]
        names = [_name(c.edit) for c in rows]
        for measure, opacity in (("refusal", 1.0), ("degenerate", 0.4)):
            vals = [rate_pct(c.get(measure)) for c in rows]
            fig.add_trace(go.Bar(
                x=names, y=[v[0] for v in vals], name="refusal" if measure == "refusal" else "degenerate replies",
                legendgroup=measure, showlegend=i == 0, offsetgroup=measure, opacity=opacity,
                marker=dict(color=[EDIT_COLORS.get(c.edit, "#777") for c in rows],
                            pattern=dict(shape="" if measure == "refusal" else "/")),
                error_y=dict(type="data", symmetric=False, array=[(v[2] or 0) - (v[0] or 0) for v in vals],
                             arrayminus=[(v[0] or 0) - (v[1] or 0) for v in vals], thickness=1.2, width=3),
                customdata=[[v[3], v[4], v[1], v[2]] for v in vals],
                hovertemplate="%{x}: " + measure + " %{y:.1f}% [%{customdata[2]:.1f}, %{customdata[3]:.1f}] "
                              "(%{customdata[0]}/%{customdata[1]})<extra></extra>"), row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="judged rate (%)", range=[0, 105], row=row + 1, col=col + 1)
    kl = ed.get("kl") or {}
    order = list(EDIT_NAMES)
    edits = sorted((e for e in kl if finite((kl[e] or {}).get("mean"))),
                   key=lambda e: (order.index(e) if e in order else len(order), e))
    if edits:
        means = [max(kl[e]["mean"], 1e-6) for e in edits]
        ci = [kl[e].get("ci") or [None, None] for e in edits]
        fig.add_trace(go.Bar(
            x=[_name(e) for e in edits], y=means, name="KL", showlegend=False,
            marker=dict(color=[EDIT_COLORS.get(e, "#777") for e in edits]),
            error_y=dict(type="data", symmetric=False, thickness=1.2, width=3,
                         array=[(c[1] - m) if finite(c[1]) else 0 for c, m in zip(ci, means)],
                         arrayminus=[(m - c[0]) if finite(c[0]) and c[0] > 0 else 0 for c, m in zip(ci, means)]),
            hovertemplate="%{x}: mean KL %{y:.3g} nats<extra></extra>"), row=2, col=2)
        fig.update_yaxes(type="log", title_text="mean KL (nats, log scale)", row=2, col=2)
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(tickangle=-30)
    d, add = ed.get("direction") or {}, ed.get("addition") or {}
    n = ed.get("n") or {}
    style(fig, title, f"direction: layer {d.get('layer')}, position {d.get('position')} (chosen by {d.get('rule')} on "
                      f"val) · addition c = {add.get('coeff')} (val) · n = {n.get('harmful')} harmful, "
                      f"{n.get('harmless')} harmless, {n.get('borderline')} borderline · {replies_note(ed)}")
    return legend_below(fig, -0.2, 150)


CAPTION = """
    The chosen direction's edits on the test split. Erasing refusal on harmful prompts: directional ablation (every
    layer) and ACE with α = 0 (the projection set to the harmless reference), each with one direction or each layer's
    own. Inducing refusal on harmless prompts: activation addition (strength calibrated on val) and ACE with α = 1 (the
    projection set to the harmful level). Borderline prompts show what every edit does to safe requests that sound
    unsafe. Lighter hatched bars: degenerate replies; bottom right: the KL each edit costs on harmless prompts. Error bars
    are 95% intervals (Wilson; bootstrap for KL); paired differences between edits are in the report's table.
"""

register(Figure(name="edits", title="Ablation vs ACE vs addition (test)", size=(1200, 900), draw=edits_figure,
                stage="edits", study="refusal", order=20, caption=prose(CAPTION)))
