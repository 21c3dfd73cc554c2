"""The refusal-vs-KL front of the refusal study: every candidate direction on the val split."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import COLORS, empty, legend_below, model_label, replies_note, rgba, style
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite, fmt, rate_text
from persona_refusal.results import RefusalResults

__all__ = ["front_figure", "GOAL_REFUSAL", "KL_FLOOR"]

GOAL_REFUSAL = 0.10
"""The refusal study's goal for judged harmful refusal after an edit (drawn as a dotted line)."""
KL_FLOOR = 1e-4
"""KL values below this are drawn at it on the log axis (their true value is in the hover text)."""
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon", "cross")
"""One marker symbol per candidate position."""
RULE_SYMBOLS = {"arditi": "circle-open", "kl_budget": "square-open", "knee": "diamond-open"}


def _hover(c: dict, tags: list[str]) -> str:
    where = f"position {c.get('position')}, " + (f"layer {c.get('layer')}" if c.get("kind") == "single"
                                                  else "each layer's own direction")
    parts = [where,
             f"judged refusal {rate_text(c.get('refusal'))}" if c.get("refusal") else "not judged",
             f"degenerate {rate_text(c.get('degenerate'))}" if c.get("degenerate") else None,
             f"first-token bypass {fmt(c.get('bypass'), '.2f')} (refusal-token rate {fmt(c.get('bypass_rate'), '.0%')})",
             f"KL {fmt(c.get('kl'), '.3g')} [{fmt((c.get('kl_ci') or [None])[0], '.3g')}, "
             f"{fmt((c.get('kl_ci') or [None, None])[1], '.3g')}] nats",
             f"induce {fmt(c.get('induce'), '.2f')} (addition, coefficient 1)" if c.get("induce") is not None else None]
    return "<br>".join([p for p in parts if p] + [f"<b>{t}</b>" for t in tags])


def front_figure(results: dict) -> go.Figure:
    """Refusal after ablation against the KL it costs, for every candidate direction (val split).

    Left: judged refusal of the replies to the harmful val subset with the candidate
    ablated (Wilson 95% error bars), for the candidates that were judged. Right: the
    first-token bypass score (mean refusal log-odds, lower = less refusal) of every
    candidate. x: mean KL of the next-token distribution on harmless val prompts, log
    scale. Colour: layer; symbol: position; black-edged stars: each position's per-layer
    directions. The line is the Pareto front (no candidate has both less refusal and less
    KL); the orange star is the direction the study used, open markers the other rules'
    choices; dotted: the KL budget, the unedited level, and the 10% goal.
    """
    results = RefusalResults.of(results)
    front = results.front or {}
    cands = [c for c in front.get("candidates") or [] if finite(c.get("kl"))]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.09,
                        subplot_titles=("judged refusal after ablation (val subset)",
                                        "first-token bypass score (all candidates)"))
    title = f"The refusal-vs-KL front — {model_label(results)}"
    if not cands:
        return empty(go.Figure(), "no candidate scores in these results", title)
    rd = results.refusal_direction or {}
    rules = (results.selection or {}).get("rules") or {}
    tags: dict[str, list[str]] = {}
    for name, ch in rules.items():
        if ch.get("key"):
            tags.setdefault(ch.key, []).append(f"chosen by {name}")
    layers = [c.layer for c in cands if c.get("kind") == "single"]
    lmin, lmax = (min(layers), max(layers)) if layers else (0, 1)
    positions = sorted({c.position for c in cands})
    kl_x = {c["key"]: max(c["kl"], KL_FLOOR) for c in cands}

    def y_of(c: dict, col: int):
        if col == 1:
            return None if not c.get("refusal") else 100 * c["refusal"]["rate"]
        return c.get("bypass")

    for col in (1, 2):
        for i, p in enumerate(positions):
            pts = [c for c in cands if c.get("kind") == "single" and c.position == p and y_of(c, col) is not None]
            if not pts:
                continue
            err = None
            if col == 1:
                err = dict(type="data", symmetric=False, thickness=1, width=3, color="#999",
                           array=[100 * c["refusal"]["ci"][1] - y_of(c, 1) for c in pts],
                           arrayminus=[y_of(c, 1) - 100 * c["refusal"]["ci"][0] for c in pts])
            fig.add_trace(go.Scatter(
                x=[kl_x[c["key"]] for c in pts], y=[y_of(c, col) for c in pts], mode="markers",
                name=f"candidates, position {p}", legendgroup=f"pos{p}", showlegend=col == 2,
                marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=10, color=[c.layer for c in pts],
                            colorscale="Viridis", cmin=lmin, cmax=lmax, line=dict(color="white", width=0.5),
                            showscale=col == 2 and i == 0,
                            colorbar=dict(title="layer", x=1.02, len=0.8) if col == 2 and i == 0 else None),
                error_y=err, hovertext=[_hover(c, tags.get(c["key"], [])) for c in pts], hoverinfo="text"),
                row=1, col=col)
        per = [c for c in cands if c.get("kind") == "per_layer" and y_of(c, col) is not None]
        if per:
            fig.add_trace(go.Scatter(
                x=[kl_x[c["key"]] for c in per], y=[y_of(c, col) for c in per], mode="markers",
                name="each layer's own direction (per position)", legendgroup="per_layer", showlegend=col == 2,
                marker=dict(symbol="star-diamond", size=13, color="#ffffff", line=dict(color="#111", width=1.5)),
                hovertext=[_hover(c, []) for c in per], hoverinfo="text"), row=1, col=col)
        key = "pareto_judged" if col == 1 else "pareto_first_token"
        on = sorted([c for c in cands if c["key"] in set(front.get(key) or []) and y_of(c, col) is not None],
                    key=lambda c: kl_x[c["key"]])
        if on:
            fig.add_trace(go.Scatter(
                x=[kl_x[c["key"]] for c in on], y=[y_of(c, col) for c in on], mode="lines", line_shape="hv",
                line=dict(color=rgba(COLORS["gating"], 0.7), width=2), name="Pareto front", legendgroup="front",
                showlegend=col == 2, hoverinfo="skip"), row=1, col=col)
        picked: dict[str, list[str]] = {}
        for name, ch in rules.items():
            if ch.get("key"):
                picked.setdefault(ch.key, []).append(name)
        for key, names in picked.items():
            c = next((c for c in cands if c["key"] == key), None)
            if c is None or y_of(c, col) is None:
                continue
            used = key == rd.get("key")
            fig.add_trace(go.Scatter(
                x=[kl_x[key]], y=[y_of(c, col)], mode="markers",
                name=(f"used: {rd.get('rule')}" if used else "chosen by " + ", ".join(names))
                + f" (layer {c['layer']}, position {c['position']})", legendgroup=f"rule-{key}", showlegend=col == 2,
                marker=dict(symbol="star" if used else RULE_SYMBOLS.get(names[0], "circle-open"),
                            size=22 if used else 17, color=COLORS["chosen"] if used else "#333",
                            line=dict(color="#333", width=1.5)),
                hovertext=[_hover(c, tags.get(key, []))], hoverinfo="text"), row=1, col=col)
    base = front.get("baseline") or {}
    judged0 = (base.get("judged") or {}).get("refusal")
    xs = list(kl_x.values())
    x_range = [min(xs) / 1.6, max(xs) * 1.6]
    levels = {1: None if not judged0 else 100 * judged0["rate"],
              2: (base.get("harmful_first_token") or {}).get("score_mean")}
    for col, level in levels.items():
        if finite(level):
            fig.add_trace(go.Scatter(x=x_range, y=[level, level], mode="lines", line=dict(color="#444", dash="dot"),
                                     name="unedited (harmful val)", legendgroup="unedited", showlegend=col == 2,
                                     hovertemplate=f"unedited: {level:.3g}<extra></extra>"), row=1, col=col)
    fig.add_trace(go.Scatter(x=x_range, y=[100 * GOAL_REFUSAL] * 2, mode="lines", name="goal: 10% judged refusal",
                             line=dict(color=COLORS["harmless"], dash="dot", width=1.5), hoverinfo="skip"), row=1, col=1)
    budget = front.get("kl_budget")
    if finite(budget) and budget > 0:
        for col in (1, 2):
            fig.add_vline(x=budget, line=dict(color=COLORS["persona"], width=1.2, dash="dash"), row=1, col=col,
                          annotation=dict(text=f"KL budget {budget:g}", font=dict(size=11)) if col == 1 else None)
    fig.update_xaxes(type="log", title_text="KL on harmless val prompts (nats, log scale)",
                     range=[math.log10(x_range[0]), math.log10(x_range[1])])
    fig.update_yaxes(title_text="judged refusal (%)", range=[-4, 104], row=1, col=1)
    fig.update_yaxes(title_text="mean refusal log-odds (lower = less refusal)", row=1, col=2)
    n_single = sum(c.get("kind") == "single" for c in cands)
    style(fig, title, f"{n_single} candidates (positions {front.get('positions')}, layers "
                      f"{min(layers) if layers else '?'}..{max(layers) if layers else '?'}) · first token: "
                      f"{front.get('n_val')} + {front.get('n_val')} val prompts · judged: {front.get('n_front')} "
                      f"harmful val prompts, {replies_note(front)}")
    return legend_below(fig, -0.16, 130)


CAPTION = """
    Every diff-in-means candidate (position × layer), ablated at every layer: how much refusal remains on the harmful
    val prompts against what it costs on harmless ones (KL of the next-token distribution, log scale). Left: judged
    replies for the candidates that were judged (Wilson 95% bars); right: the first-token bypass score of every
    candidate. The line is the Pareto front; the orange star is the direction the study used (the rule that chose it is
    in the legend), open markers the other rules' choices, white stars each position's per-layer directions. Hover a
    point for its layer, position and scores. Val prompts only: the test split never enters the choice.
"""

register(Figure(name="front", title="The refusal-vs-KL front (val)", size=(1200, 620), draw=front_figure, stage="front",
                study="refusal", order=10, caption=prose(CAPTION)))
