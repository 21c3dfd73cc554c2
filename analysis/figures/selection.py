"""How the refusal direction was selected among candidate layers."""

from __future__ import annotations

import plotly.graph_objects as go

from persona_refusal.analysis.figures._style import COLORS, empty, layers_axis, legend_below, rgba, shades_of, style
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite, fmt
from persona_refusal.results import GatingResults

__all__ = ["selection_figure"]


def selection_figure(selection_report: dict, *, model_id: str | None = None) -> go.Figure:
    """How the refusal direction was chosen among candidate layers (Arditi et al. 2024).

    Each point is a candidate (diff-in-means at one layer and position). y is its bypass
    score: the mean first-token refusal log-odds on held-out harmful prompts with the
    candidate ablated everywhere — lower means ablating it removes more refusal. The
    dotted lines are the unablated harmful and harmless scores. Candidates are tested
    best-first; grey points failed a filter (the hover says which: addition must induce
    refusal on harmless prompts, ablation must keep KL small), ``×`` marks at the bottom
    were never scored (zero vector, or too close to the output). The orange star is the
    chosen direction.

    Args:
        selection_report: the dict saved as ``directions/refusal_selection.json``.
        model_id: shown in the title when given.
    """
    cands = list((selection_report or {}).get("candidates") or [])
    chosen = (selection_report or {}).get("chosen") or {}
    settings = (selection_report or {}).get("settings") or {}
    fig = go.Figure()
    title = "Refusal-direction selection: bypass score per candidate" + (f" — {model_id}" if model_id else "")
    if not cands:
        return empty(fig, "no selection report", title)
    scored = [c for c in cands if finite(c.get("bypass"))]
    unscored = [c for c in cands if not finite(c.get("bypass"))]
    vals = [c["bypass"] for c in scored] + [v for v in (selection_report.get("baseline_harmful"),
                                                        selection_report.get("baseline_harmless")) if finite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = 0.08 * (hi - lo or 1.0)
    floor = lo - 1.5 * pad

    def is_chosen(c):
        return bool(chosen) and c.get("layer") == chosen.get("layer") and c.get("position") == chosen.get("position")

    def hover(c):
        parts = [f"layer {c.get('layer')}, position {c.get('position')}",
                 f"bypass {fmt(c.get('bypass'), '.3f')}", f"induce {fmt(c.get('induce'), '.3f')}",
                 f"KL {fmt(c.get('kl'), '.3g')}"]
        if c.get("discarded"):
            parts.append(f"discarded: {c['discarded']}")
        elif is_chosen(c):
            parts.append("<b>chosen</b>")
        elif c.get("induce") is None:
            parts.append("not tested: a better candidate passed first")
        return "<br>".join(parts)

    positions = sorted({c.get("position") for c in cands})
    multi = len(positions) > 1
    shades = shades_of(COLORS["baseline"], len(positions))
    for pos, color in zip(positions, shades):
        pts = sorted((c for c in scored if c.get("position") == pos), key=lambda c: c["layer"])
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[c["layer"] for c in pts], y=[c["bypass"] for c in pts], mode="lines+markers",
            name=f"bypass score, position {pos}" if multi else "bypass score (candidate ablated)",
            line=dict(color=rgba(color, 0.5), width=1.5),
            marker=dict(size=10, color=["#c8c8c8" if c.get("discarded") else color for c in pts],
                        line=dict(color=["#999" if c.get("discarded") else "white" for c in pts], width=1)),
            hovertext=[hover(c) for c in pts], hoverinfo="text"))
    disc = [c for c in scored if c.get("discarded")]
    if disc:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="failed a filter (reason in hover)",
                                 marker=dict(size=10, color="#c8c8c8", line=dict(color="#999", width=1))))
    if unscored:
        fig.add_trace(go.Scatter(
            x=[c["layer"] for c in unscored], y=[floor] * len(unscored), mode="markers",
            name="not scored (reason in hover)", marker=dict(symbol="x-thin", size=11, line=dict(color="#999", width=2)),
            hovertext=[hover(c) for c in unscored], hoverinfo="text"))
    if chosen and finite(chosen.get("bypass")):
        fig.add_trace(go.Scatter(
            x=[chosen["layer"]], y=[chosen["bypass"]], mode="markers+text", name=f"chosen: layer {chosen['layer']}",
            marker=dict(symbol="star", size=20, color=COLORS["chosen"], line=dict(color="#333", width=1)),
            text=[f"chosen (layer {chosen['layer']})"], textposition="top center", hovertext=[hover(chosen)],
            hoverinfo="text"))
    xs = [c.get("layer") for c in cands if finite(c.get("layer"))]
    for key, name, color in (("baseline_harmful", "harmful, nothing ablated", "#444444"),
                             ("baseline_harmless", "harmless, nothing ablated", COLORS["harmless"])):
        v = selection_report.get(key)
        if finite(v) and xs:
            fig.add_trace(go.Scatter(
                x=[min(xs) - 0.6, max(xs) + 0.6], y=[v, v], mode="lines", name=f"{name}: {v:.2f}",
                line=dict(color=color, dash="dot", width=2), hovertemplate=f"{name}: {v:.3f}<extra></extra>"))
    if xs:
        layers_axis(fig, xs)
    fig.update_yaxes(title_text="bypass score (mean refusal log-odds,<br>harmful val prompts; lower = better)",
                     range=[floor - pad, hi + 2.5 * pad])
    fig.update_xaxes(title_text="candidate layer (resid_pre index)")
    style(fig, title,
          f"{len(cands)} candidates · filters: induce ≥ {fmt(settings.get('induce_threshold'), 'g')}, KL ≤ "
          f"{fmt(settings.get('kl_threshold'), 'g')}, layer < {fmt(settings.get('max_layer_fraction'), 'g')}·n_layers"
          f" · val prompts: {settings.get('n_harmful_val')} harmful, {settings.get('n_harmless_val')} harmless")
    return legend_below(fig, -0.16, 120)


SELECTION_FILE = "directions/refusal_selection.json"
"""Where a run folder keeps the selection report (relative to the run folder)."""


def _draw(results: dict) -> go.Figure:
    """The registry's entry: the report comes in as ``results["refusal_selection"]``."""
    results = GatingResults.of(results)
    return selection_figure(results.get("refusal_selection") or {}, model_id=(results.model or {}).get("model_id"))


CAPTION = """
    How the refusal direction was chosen (Arditi et al. 2024): each candidate layer's diff-in-means direction is
    ablated and the remaining refusal on held-out harmful prompts measured (bypass score, lower is better). The
    best candidate that also induces refusal when added and barely changes harmless outputs (KL filter) wins;
    grey points failed a filter (hover for the reason).
"""
"""The report's caption (``str.format`` fields: see :attr:`.registry.Figure.caption`)."""

register(Figure(name="selection", title="How the refusal direction was selected", size=(1000, 560), draw=_draw,
                stage="refusal", order=90, inputs=(("refusal_selection", SELECTION_FILE),), caption=prose(CAPTION),
                needs=lambda r: ((GatingResults.of(r).refusal_direction or {}).get("selection") or {}).get("rule")
                != "fixed layer"))
