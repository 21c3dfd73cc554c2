"""The persona direction without its refusal component: does it still suppress refusal?"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_refusal.analysis.figures._style import (
    COLORS, RATE_AXIS, empty, error_bars, legend_below, model_label, rate_pct, shades_of, style,
)
from persona_refusal.analysis.figures.registry import Figure, prose, register
from persona_refusal.formatting import finite
from persona_refusal.results import GatingResults

__all__ = ["persona_orthogonal_figure", "variant_label"]

_VARIANT_COLOR = {"full": COLORS["persona"], "minus:study": COLORS["gating"], "minus:injection": COLORS["gating"],
                  "only:study": COLORS["control"], "only:injection": COLORS["control"],
                  "minus:random": COLORS["random"]}


def variant_label(name: str, directions: dict, *, tick: bool = False) -> str:
    """A reader's name for a variant (``minus:injection`` → "persona − component along layer 21's
    own refusal direction"); ``tick``: the short, wrapped axis label ("persona −<br>L21's own<br>refusal dir.")."""
    layer = (directions.get(name.partition(":")[2]) or {}).get("layer")
    if tick:
        full, minus, only = "persona<br>(full)", "persona −<br>{}", "only<br>{}"
        where = {"study": f"study's<br>refusal dir. (L{layer})", "injection": f"L{layer}'s own<br>refusal dir.",
                 "random": "matched<br>random dir."}
    else:
        full, minus, only = "persona (full)", "persona − component along {}", "only the component along {}"
        where = {"study": f"study's refusal direction, layer {layer}", "injection": f"layer {layer}'s own refusal "
                 "direction", "random": "matched random direction"}
    if name == "full":
        return full
    kind, _, tag = name.partition(":")
    return (minus if kind == "minus" else only).format(where.get(tag, tag))


def persona_orthogonal_figure(results: dict) -> go.Figure:
    """Does the persona suppress refusal through its own refusal component?

    Left: judged refusal rate (bars, Wilson 95% intervals) of harmful evaluation prompts
    with no steering, with the full persona, with the persona minus its component along a
    refusal direction (the study's, and the injection layer's own), with that component
    alone, and with a matched random component removed (the control: the same share of
    the persona's norm, along a direction unrelated to refusal); the degenerate share of
    each is the pink marker. If the component carries the suppression, removing it brings
    refusal back near the baseline while the random removal does not. Right: the re-add
    cells at β₀ under each removal, as restoration of the gap between the baseline and
    that variant.
    """
    po = GatingResults.of(results).persona_orthogonal or {}
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=("refusal of harmful prompts under each persona variant",
                                        "re-add cells under each removal (restoration)"))
    if not po.get("variants"):
        return empty(fig, "no persona_orthogonal stage in these results", "Persona without refusal: no data")
    main, dirs = po.get("judge"), po.get("directions") or {}
    rows = [("no<br>steering", po.get("baseline") or {}, COLORS["baseline"])]
    rows += [(variant_label(v.variant, dirs, tick=True), v, _VARIANT_COLOR.get(v.variant, COLORS["control"]))
             for v in po.variants]
    names = [r[0] for r in rows]
    rr = [rate_pct((r[1].get(main) or {}).get("refusal")) for r in rows]
    deg = [rate_pct((r[1].get(main) or {}).get("degenerate")) for r in rows]
    y = [r[0] for r in rr]
    fig.add_trace(go.Bar(
        x=names, y=y, marker_color=[r[2] for r in rows], name=f"refusal ({main} judge)", showlegend=False,
        error_y=error_bars(y, [r[1] for r in rr], [r[2] for r in rr]) | dict(color="#333"),
        customdata=[[r[3], r[4]] for r in rr],
        hovertemplate="%{x}<br>refusal %{y:.1f}% (%{customdata[0]}/%{customdata[1]})<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=names, y=[d[0] for d in deg], mode="markers", name="degenerate replies",
        marker=dict(symbol="x", size=10, color=COLORS["degenerate"]),
        hovertemplate="%{x}<br>degenerate %{y:.1f}%<extra></extra>"), row=1, col=1)
    cells = po.get("cells") or []
    variants = list(dict.fromkeys(c["variant"] for c in cells))
    cell_names = list(dict.fromkeys(c["cell"] for c in cells))
    for v, color in zip(variants, shades_of(COLORS["gating"], max(1, len(variants)))):
        pts = [next((c for c in cells if c["variant"] == v and c["cell"] == name), None) for name in cell_names]
        rest = [((p or {}).get(main) or {}) for p in pts]
        yv = [r.get("restoration") if finite(r.get("restoration")) else None for r in rest]
        ci = [r.get("restoration_ci") or [None, None] for r in rest]
        fig.add_trace(go.Scatter(
            x=cell_names, y=yv, mode="markers", name=f"cells under: {variant_label(v, dirs)}",
            marker=dict(size=11, color=COLORS["random"] if v == "minus:random" else color),
            error_y=error_bars(yv, [c[0] for c in ci], [c[1] for c in ci]),
            hovertemplate="%{x} cell<br>restoration %{y:.2f}<extra>" + v + "</extra>"), row=1, col=2)
    fig.add_hline(y=0, line=dict(color="#bbb", width=1, dash="dot"), row=1, col=2)
    fig.add_hline(y=1, line=dict(color="#bbb", width=1, dash="dot"), row=1, col=2)
    fig.update_yaxes(title_text=RATE_AXIS, range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="restoration", row=1, col=2)
    fig.update_xaxes(tickangle=0, tickfont=dict(size=11), row=1, col=1)
    share = {k: v.get("share") for k, v in dirs.items()}
    style(fig, f"The persona without its refusal component — {model_label(results)}",
          f"n = {po.get('n')} evaluation prompts · α = {po.get('alpha'):g} at layer {po.get('persona_layer')} · "
          + " · ".join(f"{k}: cos {dirs[k]['cosine']:+.2f} ({100 * s:.0f}% of the norm²)"
                       for k, s in share.items() if s is not None))
    return legend_below(fig, -0.3, 200)


CAPTION = """
    The compliant-persona vector with its component along a refusal direction projected out, that component
    alone, and a matched random component removed (the control), each steered at the study's α on the harmful
    evaluation prompts; right, the re-add cells at β₀ under each removal.
"""
"""The report's caption."""

register(Figure(name="persona_orthogonal", title="The persona without its refusal component", size=(1200, 720),
                draw=persona_orthogonal_figure, stage="persona_orthogonal", order=17, caption=prose(CAPTION),
                needs=lambda r: bool((GatingResults.of(r).persona_orthogonal or {}).get("variants"))))
