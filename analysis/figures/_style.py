"""Style and drawing helpers shared by the figure modules (colours, axes, bands, markers).

Not a figure: the registry does not discover modules whose name starts with ``_``.
"""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from persona_refusal.formatting import finite, percent, percent_text, rate_parts
from persona_refusal.results import GatingResults, SummaryDict

# ============================================================================ style
COLORS = {
    "baseline": "#0072B2",  # Okabe–Ito blue: the model as it is
    "persona": "#D55E00",  # vermillion: compliant-persona steering
    "gating": "#7B2D8E",  # purple: persona + refusal re-added
    "control": "#7F7F7F",  # grey: refusal re-added without persona
    "random": "#9E9E9E",  # grey: random-direction control
    "harmless": "#009E73",  # bluish green: harmless prompts
    "confirm": "#111111",  # black: generation-confirmed cells
    "degenerate": "#CC79A7",  # reddish purple: degenerate replies
    "chosen": "#E69F00",  # orange: the selected candidate
    "early": "rgba(86,180,233,0.07)",  # shading: before persona injection
    "late": "rgba(230,159,0,0.07)",  # shading: after persona injection
}
"""One colour per condition, shared by every figure (colour-blind safe Okabe–Ito hues)."""


FONT = dict(family="Arial, Helvetica, sans-serif", size=13, color="#222")
LAYER_AXIS = "layer (resid_pre index)"
RATE_AXIS = "refusal rate (%)"
PAPER_NOTE = "Zhong & Li (2026), Llama-3.1-8B-Instruct: 97% → 2% of harmful prompts refused"
"""The paper's headline numbers, quoted for comparison in :func:`outcomes_figure`."""


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def shade(hex_color: str, t: float) -> str:
    """Mix ``hex_color`` with white (``t`` = 0: the colour, 1: white)."""
    h = hex_color.lstrip("#")
    rgb = [int(h[i:i + 2], 16) for i in (0, 2, 4)]
    return "#" + "".join(f"{round(c + (255 - c) * t):02x}" for c in rgb)


def shades_of(color: str, n: int) -> list[str]:
    """``n`` shades of one hue, darkest last (for several strengths β)."""
    if n <= 1:
        return [color]
    return [shade(color, 0.55 * (1 - i / (n - 1))) for i in range(n)]


def rate_pct(rec: dict | None) -> tuple:
    """``(rate, lo, hi, k, n)`` in percent from a first-token record (``refusal_rate``) or
    a :class:`Rate` record (``rate``)."""
    r, lo, hi, k, n = rate_parts(rec)
    return percent(r), percent(lo), percent(hi), k, n



def segments(xs: Sequence, ys: Sequence) -> list[tuple[list, list]]:
    """Split paired sequences into runs where every value is finite."""
    out, cur_x, cur_y = [], [], []
    for x, y in zip(xs, ys):
        if finite(y) if not isinstance(y, (list, tuple)) else all(finite(v) for v in y):
            cur_x.append(x)
            cur_y.append(y)
        elif cur_x:
            out.append((cur_x, cur_y))
            cur_x, cur_y = [], []
    if cur_x:
        out.append((cur_x, cur_y))
    return out


def band(fig: go.Figure, x: Sequence, lo: Sequence, hi: Sequence, color: str, group: str, *, alpha: float = 0.16,
         row: int | None = None, col: int | None = None) -> None:
    """A shaded interval between ``lo`` and ``hi`` (split where a bound is missing)."""
    kw = {} if row is None else {"row": row, "col": col}
    for xs, pairs in segments(x, [[a, b] for a, b in zip(lo, hi)]):
        los, his = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(xs) == 1:  # a lone point: a thin bar so it stays visible
            xs, los, his = [xs[0] - 0.15, xs[0] + 0.15], los * 2, his * 2
        fig.add_trace(go.Scatter(x=xs, y=his, mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=group), **kw)
        fig.add_trace(go.Scatter(x=xs, y=los, mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor=rgba(color, alpha) if color.startswith("#") else color,
                                 hoverinfo="skip", showlegend=False, legendgroup=group), **kw)


def style(fig: go.Figure, title: str, subtitle: str | None = None, *, legend_bottom: bool = False) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        font=FONT,
        title=dict(text=title, subtitle=dict(text=subtitle or "", font=dict(size=12, color="#555")), x=0.01,
                   xanchor="left", font=dict(size=17)),
        hoverlabel=dict(font_size=12, align="left"),
        margin=dict(l=80, r=30, t=95, b=70),
        legend=dict(bgcolor="rgba(255,255,255,0.85)", bordercolor="#ddd", borderwidth=1, font=dict(size=12),
                    tracegroupgap=2),
    )
    if legend_bottom:
        legend_below(fig, -0.14, 110)
    fig.update_xaxes(showline=True, linecolor="#888", mirror=False, ticks="outside", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", ticks="outside", zeroline=False)
    return fig


def replies_note(rec: dict) -> str:
    """``"128-token replies, lenient judge"``: how a record's replies were generated and judged."""
    return f"{rec.get('max_new_tokens')}-token replies, {rec.get('judge')} judge"


def legend_below(fig: go.Figure, y: float, bottom: int) -> go.Figure:
    """A horizontal legend under the plot (its top at ``y`` in paper units), with a bottom
    margin of ``bottom`` pixels to hold it."""
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=y, yanchor="top"), margin=dict(b=bottom))
    return fig


def no_data(fig: go.Figure, text: str, **kw) -> None:
    fig.add_annotation(text=text, showarrow=False, font=dict(size=14, color="#777"), **(
        kw or dict(xref="paper", yref="paper", x=0.5, y=0.5)))


def empty(fig: go.Figure, text: str, title: str) -> go.Figure:
    """A figure without data: ``text`` in the middle, styled with ``title``."""
    no_data(fig, text)
    return style(fig, title)


def model_label(results: dict) -> str:
    return str((SummaryDict.of(results).model or {}).get("model_id", "unknown model"))


def persona_alpha(results: dict) -> float | None:
    """The persona strength the study used: calibrated on val when it was, else the configured one."""
    r = GatingResults.of(results)
    cal = r.calibration or {}
    if cal.get("calibrated") and finite(cal.get("alpha")):
        return float(cal.alpha)
    a = (r.steering or {}).get("persona_alpha")
    return float(a) if finite(a) else None


def persona_layer(results: dict) -> int | None:
    p = (GatingResults.of(results).steering or {}).get("persona_layer")
    return int(p) if finite(p) else None


def layers_axis(fig: go.Figure, layers: Sequence[int], **kw) -> None:
    """Integer ticks on a layer axis (every layer when few, else a readable stride)."""
    if not layers:
        return
    lo, hi = min(layers), max(layers)
    span = hi - lo
    dtick = 1 if span <= 24 else (2 if span <= 48 else 4)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=dtick, range=[lo - 0.6, hi + 0.6], **kw)


def persona_marker(fig: go.Figure, P: int | None, *, rows: Sequence[int] | None = None, label: bool = True,
                   col: int | None = None) -> None:
    """Vertical dashed line at the persona layer (on each of ``rows``)."""
    if P is None:
        return
    for i, r in enumerate(rows or [None]):
        kw = {} if r is None else {"row": r, "col": col or 1}
        if label and i == 0:
            kw |= dict(annotation=dict(text=f"persona added (layer {P})", font=dict(size=11, color=COLORS["persona"]),
                                       yanchor="bottom"), annotation_position="top")
        fig.add_vline(x=P, line=dict(color=COLORS["persona"], width=1.5, dash="dash"), layer="below",
                      exclude_empty_subplots=False, **kw)


def clip_band(values: Sequence[float | None], *, lo: float, hi: float, pad: float = 0.08,
              hard: tuple[float, float] = (-1.0, 2.0)) -> tuple[float, float]:
    """An axis range covering ``values`` and ``[lo, hi]`` but never beyond ``hard``."""
    v = [x for x in values if finite(x)]
    a = min([lo] + v) - pad
    b = max([hi] + v) + pad
    return max(a, hard[0]), min(b, hard[1])


def clipped_points(y: Sequence[float | None], rng: tuple[float, float]) -> tuple[list, list]:
    """Values clamped to the range, with a marker symbol per point (triangles if clipped)."""
    ys, sym = [], []
    for v in y:
        if not finite(v):
            ys.append(None)
            sym.append("circle")
        elif v > rng[1]:
            ys.append(rng[1])
            sym.append("triangle-up")
        elif v < rng[0]:
            ys.append(rng[0])
            sym.append("triangle-down")
        else:
            ys.append(v)
            sym.append("circle")
    return ys, sym


def error_bars(point: Sequence, lo: Sequence, hi: Sequence) -> dict:
    """Asymmetric error-bar arrays (missing bounds become zero-length bars)."""
    plus = [(h - p) if finite(h) and finite(p) else 0 for p, h in zip(point, hi)]
    minus = [(p - l) if finite(l) and finite(p) else 0 for p, l in zip(point, lo)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.2, width=4)


def hline_trace(fig: go.Figure, x_range: tuple[float, float], rec: dict | None, name: str, color: str, *,
                dash: str = "dot", row: int | None = None, col: int | None = None, band: bool = True,
                extra: str = "") -> None:
    """A horizontal reference line (with hover and a legend entry) and its CI band."""
    r, lo, hi, k, n = rate_pct(rec)
    if r is None:
        return
    kw = {} if row is None else {"row": row, "col": col or 1}
    if band and lo is not None and hi is not None:
        fig.add_hrect(y0=lo, y1=hi, fillcolor=rgba(color, 0.07), line_width=0, layer="below",
                      exclude_empty_subplots=False, **kw)
    fig.add_trace(go.Scatter(
        x=list(x_range), y=[r, r], mode="lines", line=dict(color=color, width=2, dash=dash), name=name,
        legendgroup=name,
        hovertemplate=f"{name}<br>{r:.1f}% [{percent_text(lo)}, {percent_text(hi)}] ({k}/{n}){extra}<extra></extra>"),
        **kw)
