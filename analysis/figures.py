"""Figures of the persona-gating study, rebuilt from ``results.json`` alone.

Context
-------
Every function here is pure: it takes the dictionary that
:func:`persona_refusal.experiments.run_gating_study` writes to ``results.json`` (or, for
:func:`selection_figure`, the ``directions/refusal_selection.json`` report) and returns a
:class:`plotly.graph_objects.Figure`. Nothing loads a model or touches a tensor, so a run
folder copied to another machine still draws.

Conventions shared by all figures:

* rates are shown in percent, with Wilson 95% intervals as shaded bands (lines) or error
  bars (points and bars);
* layers are ``resid_pre`` indices (adding at "block *b*'s output" in the paper is layer
  ``b + 1`` here); the layer where persona steering is added is a vertical dashed line;
* one colour per condition everywhere (:data:`COLORS`): blue = the model as it is
  (baseline), vermillion = compliant-persona steering, purple = persona steering with the
  refusal direction re-added, grey = controls, green = harmless prompts;
* *restoration* is ``(rate − persona rate) / (baseline rate − persona rate)``: 0 means
  re-adding refusal did nothing against the persona, 1 means refusal is back at the
  unsteered level. Values far outside ``[0, 1]`` are drawn as triangles at the edge of the
  axis (their true value is in the hover text).

Figures are sized to be readable at 1000×600 pixels (:data:`FIGURE_SIZES` lists the size
each one is exported at).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "COLORS",
    "FIGURE_SIZES",
    "gating_figure",
    "alpha_figure",
    "outcomes_figure",
    "heatmap_figure",
    "projections_figure",
    "knockout_figure",
    "patching_figure",
    "cosine_figure",
    "selection_figure",
]

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

FIGURE_SIZES = {
    "gating": (1000, 900),
    "alpha": (1000, 640),
    "outcomes": (1000, 600),
    "heatmap": (1000, 560),
    "projections": (1000, 640),
    "knockout": (1000, 600),
    "patching": (1000, 600),
    "cosine": (1000, 560),
    "selection": (1000, 560),
}
"""Export size (width, height in pixels) of each figure."""

_FONT = dict(family="Arial, Helvetica, sans-serif", size=13, color="#222")
_LAYER_AXIS = "layer (resid_pre index)"
_RATE_AXIS = "refusal rate (%)"
PAPER_NOTE = "Zhong & Li (2026), Llama-3.1-8B-Instruct: 97% → 2% of harmful prompts refused"
"""The paper's headline numbers, quoted for comparison in :func:`outcomes_figure`."""


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _shade(hex_color: str, t: float) -> str:
    """Mix ``hex_color`` with white (``t`` = 0: the colour, 1: white)."""
    h = hex_color.lstrip("#")
    rgb = [int(h[i:i + 2], 16) for i in (0, 2, 4)]
    return "#" + "".join(f"{round(c + (255 - c) * t):02x}" for c in rgb)


def _series(color: str, n: int) -> list[str]:
    """``n`` shades of one hue, darkest last (for several strengths β)."""
    if n <= 1:
        return [color]
    return [_shade(color, 0.55 * (1 - i / (n - 1))) for i in range(n)]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: Any) -> float | None:
    return 100.0 * x if _finite(x) else None


def _rate(rec: dict | None) -> tuple:
    """``(rate, lo, hi, k, n)`` in percent from a first-token record (``refusal_rate``) or
    a :class:`Rate` record (``rate``)."""
    if not rec:
        return None, None, None, None, None
    r = rec.get("refusal_rate", rec.get("rate"))
    ci = rec.get("ci") or [None, None]
    return _pct(r), _pct(ci[0]), _pct(ci[1]), rec.get("k"), rec.get("n")


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def _fmt(v: Any, spec: str = ".3g") -> str:
    return format(v, spec) if _finite(v) else "n/a"


def _segments(xs: Sequence, ys: Sequence) -> list[tuple[list, list]]:
    """Split paired sequences into runs where every value is finite."""
    out, cur_x, cur_y = [], [], []
    for x, y in zip(xs, ys):
        if _finite(y) if not isinstance(y, (list, tuple)) else all(_finite(v) for v in y):
            cur_x.append(x)
            cur_y.append(y)
        elif cur_x:
            out.append((cur_x, cur_y))
            cur_x, cur_y = [], []
    if cur_x:
        out.append((cur_x, cur_y))
    return out


def _band(fig: go.Figure, x: Sequence, lo: Sequence, hi: Sequence, color: str, group: str, *, alpha: float = 0.16,
          row: int | None = None, col: int | None = None) -> None:
    """A shaded interval between ``lo`` and ``hi`` (split where a bound is missing)."""
    kw = {} if row is None else {"row": row, "col": col}
    for xs, pairs in _segments(x, [[a, b] for a, b in zip(lo, hi)]):
        los, his = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(xs) == 1:  # a lone point: a thin bar so it stays visible
            xs, los, his = [xs[0] - 0.15, xs[0] + 0.15], los * 2, his * 2
        fig.add_trace(go.Scatter(x=xs, y=his, mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=group), **kw)
        fig.add_trace(go.Scatter(x=xs, y=los, mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor=_rgba(color, alpha) if color.startswith("#") else color,
                                 hoverinfo="skip", showlegend=False, legendgroup=group), **kw)


def _style(fig: go.Figure, title: str, subtitle: str | None = None, *, legend_bottom: bool = False) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        font=_FONT,
        title=dict(text=title, subtitle=dict(text=subtitle or "", font=dict(size=12, color="#555")), x=0.01,
                   xanchor="left", font=dict(size=17)),
        hoverlabel=dict(font_size=12, align="left"),
        margin=dict(l=80, r=30, t=95, b=70),
        legend=dict(bgcolor="rgba(255,255,255,0.85)", bordercolor="#ddd", borderwidth=1, font=dict(size=12),
                    tracegroupgap=2),
    )
    if legend_bottom:
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.14, yanchor="top"),
                          margin=dict(b=110))
    fig.update_xaxes(showline=True, linecolor="#888", mirror=False, ticks="outside", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", ticks="outside", zeroline=False)
    return fig


def _no_data(fig: go.Figure, text: str, **kw) -> None:
    fig.add_annotation(text=text, showarrow=False, font=dict(size=14, color="#777"), **(
        kw or dict(xref="paper", yref="paper", x=0.5, y=0.5)))


def _model_id(results: dict) -> str:
    return str((results.get("model") or {}).get("model_id", "unknown model"))


def _persona_layer(results: dict) -> int | None:
    p = (results.get("steering") or {}).get("persona_layer")
    return int(p) if _finite(p) else None


def _layers_axis(fig: go.Figure, layers: Sequence[int], **kw) -> None:
    """Integer ticks on a layer axis (every layer when few, else a readable stride)."""
    if not layers:
        return
    lo, hi = min(layers), max(layers)
    span = hi - lo
    dtick = 1 if span <= 24 else (2 if span <= 48 else 4)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=dtick, range=[lo - 0.6, hi + 0.6], **kw)


def _persona_marker(fig: go.Figure, P: int | None, *, rows: Sequence[int] | None = None, label: bool = True,
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


def _clip_band(values: Sequence[float | None], *, lo: float, hi: float, pad: float = 0.08,
               hard: tuple[float, float] = (-1.0, 2.0)) -> tuple[float, float]:
    """An axis range covering ``values`` and ``[lo, hi]`` but never beyond ``hard``."""
    v = [x for x in values if _finite(x)]
    a = min([lo] + v) - pad
    b = max([hi] + v) + pad
    return max(a, hard[0]), min(b, hard[1])


def _clipped_points(y: Sequence[float | None], rng: tuple[float, float]) -> tuple[list, list]:
    """Values clamped to the range, with a marker symbol per point (triangles if clipped)."""
    ys, sym = [], []
    for v in y:
        if not _finite(v):
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


def _err(point: Sequence, lo: Sequence, hi: Sequence) -> dict:
    """Asymmetric error-bar arrays (missing bounds become zero-length bars)."""
    plus = [(h - p) if _finite(h) and _finite(p) else 0 for p, h in zip(point, hi)]
    minus = [(p - l) if _finite(l) and _finite(p) else 0 for p, l in zip(point, lo)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.2, width=4)


def _ci_text(lo: Any, hi: Any, spec: str = ".2f") -> str:
    return f"[{_fmt(lo, spec)}, {_fmt(hi, spec)}]" if (_finite(lo) or _finite(hi)) else "[n/a]"


def _hline_trace(fig: go.Figure, x_range: tuple[float, float], rec: dict | None, name: str, color: str, *,
                 dash: str = "dot", row: int | None = None, col: int | None = None, band: bool = True,
                 extra: str = "") -> None:
    """A horizontal reference line (with hover and a legend entry) and its CI band."""
    r, lo, hi, k, n = _rate(rec)
    if r is None:
        return
    kw = {} if row is None else {"row": row, "col": col or 1}
    if band and lo is not None and hi is not None:
        fig.add_hrect(y0=lo, y1=hi, fillcolor=_rgba(color, 0.07), line_width=0, layer="below",
                      exclude_empty_subplots=False, **kw)
    fig.add_trace(go.Scatter(
        x=list(x_range), y=[r, r], mode="lines", line=dict(color=color, width=2, dash=dash), name=name,
        legendgroup=name,
        hovertemplate=f"{name}<br>{r:.1f}% [{_fmt_pct(lo)}, {_fmt_pct(hi)}] ({k}/{n}){extra}<extra></extra>"),
        **kw)


# ============================================================================ gating (headline)
def _at_beta(records: list[dict], beta: float) -> list[dict]:
    """The sweep records of one strength β, ordered by layer."""
    return sorted((g for g in records if g["beta"] == beta), key=lambda g: g["layer"])


def gating_figure(results: dict) -> go.Figure:
    """Where does re-adding the refusal direction restore refusal under persona steering?

    Top panel: with compliant-persona steering on (``α·s·v̂`` at the persona layer), the
    refusal direction ``β·s·r̂`` is re-added at one layer at a time (x). y is the share of
    the sweep prompts whose greedy first token is a refusal token, with Wilson 95% bands,
    one purple line per β. The dashed grey line is the control: the same re-add without
    persona steering. Dotted horizontal lines (with their CI bands) are the unsteered
    baseline and the persona-only rate on the same prompts. Black diamonds are the cells
    confirmed by generating full replies and judging them (a different, stricter
    measure). The shaded regions split re-add layers into *early* (before the persona is
    injected) and *late* (after); the dashed vertical line is the persona layer.

    Middle panel: restoration ``(rate − persona)/(baseline − persona)`` of the rate, with
    its paired bootstrap 95% interval (0 = persona level, 1 = baseline level).

    Bottom panel: the mean first-token refusal log-odds (``log p(refusal token) −
    log(1 − p)``) with its 95% interval, for the same conditions, against the baseline and
    persona-only levels. It is continuous, so it shows partial restoration before any
    greedy first token flips. Restoration ``(x − persona)/(baseline − persona)`` of the
    rate and of the score, with paired bootstrap intervals, is in the hover text. If
    refusal is gated at the expression stage, the lines rise only in the late region.

    Read it as: a curve that stays at the persona level on the left and climbs to the
    baseline on the right supports "refusal is computed early but expressed late, and the
    persona gates its expression".
    """
    gating = list(results.get("gating") or [])
    control = list(results.get("gating_control") or [])
    confirm = list(results.get("gating_confirm") or [])
    sweep = results.get("sweep") or {}
    P = _persona_layer(results)
    steering = results.get("steering") or {}
    n = sweep.get("n")

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.48, 0.24, 0.28], vertical_spacing=0.05)
    layers = sorted({int(g["layer"]) for g in gating + control})
    if not layers:
        _no_data(fig, "no gating sweep in these results")
        return _style(fig, "Persona gating: no data")
    x_range = (min(layers) - 0.6, max(layers) + 0.6)

    # regions: early (before persona injection) and late (after)
    if P is not None:
        for x0, x1, color, text, xa in ((x_range[0], P, COLORS["early"], "early: before persona injection", "left"),
                                        (P, x_range[1], COLORS["late"], "late: after", "right")):
            if x1 <= x0:
                continue
            for r in (1, 2, 3):
                fig.add_vrect(x0=x0, x1=x1, fillcolor=color, line_width=0, layer="below", row=r, col=1,
                              exclude_empty_subplots=False)
        fig.add_annotation(x=P, y=1.0, xref="x", yref="y domain",
                           text=f"◀ early: re-added before the persona (layer {P})", showarrow=False,
                           xanchor="right", yanchor="bottom", xshift=-4, font=dict(size=11, color="#3a7ca5"))
        fig.add_annotation(x=P, y=1.0, xref="x", yref="y domain", text="late: re-added after ▶", showarrow=False,
                           xanchor="left", yanchor="bottom", xshift=4, font=dict(size=11, color="#b06f00"))

    # reference lines: baseline and persona-only on the sweep subset (first-token measure)
    judged = {k: (sweep.get(f"{k}_judged") or {}).get("refusal") for k in ("baseline", "persona")}
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona only")):
        jr = _rate(judged[key])
        extra = f"<br>judged from replies: {_fmt_pct(jr[0])}" if jr[0] is not None else ""
        _hline_trace(fig, x_range, sweep.get(key), name, COLORS[key], row=1, extra=extra)

    # gating lines, one per beta
    rest_all: list = []
    betas = sorted({g["beta"] for g in gating})
    shades = _series(COLORS["gating"], len(betas))
    for beta, color in zip(betas, shades):
        rows = _at_beta(gating, beta)
        x = [g["layer"] for g in rows]
        rr = [_rate(g) for g in rows]
        group = f"gating β={beta:g}"
        _band(fig, x, [r[1] for r in rr], [r[2] for r in rr], color, group, row=1, col=1)
        custom = [[r[1], r[2], r[3], r[4], _fmt(g.get("restoration"), ".2f"),
                   _ci_text(*(g.get("restoration_ci") or [None, None])),
                   "before" if P is not None and g["layer"] < P else ("at" if g["layer"] == P else "after")]
                  for g, r in zip(rows, rr)]
        fig.add_trace(go.Scatter(
            x=x, y=[r[0] for r in rr], mode="lines+markers", name=f"persona + refusal re-added, β={beta:g}",
            legendgroup=group, line=dict(color=color, width=2.5), marker=dict(size=7), customdata=custom,
            hovertemplate=("re-added at layer %{x} (%{customdata[6]} persona)<br>refusal %{y:.1f}% "
                           "[%{customdata[0]:.1f}, %{customdata[1]:.1f}] (%{customdata[2]}/%{customdata[3]})"
                           "<br>restoration %{customdata[4]} %{customdata[5]}<extra>β=" + f"{beta:g}</extra>")),
            row=1, col=1)
        rest_all += [g.get("restoration") for g in rows] + [c for g in rows for c in (g.get("restoration_ci") or [])]

    # control: refusal re-added without persona steering
    cbetas = sorted({g["beta"] for g in control})
    for i, beta in enumerate(cbetas):
        rows = _at_beta(control, beta)
        x = [g["layer"] for g in rows]
        rr = [_rate(g) for g in rows]
        color = _series(COLORS["control"], len(cbetas))[i]
        group = f"control β={beta:g}"
        _band(fig, x, [r[1] for r in rr], [r[2] for r in rr], color, group, alpha=0.10, row=1, col=1)
        fig.add_trace(go.Scatter(
            x=x, y=[r[0] for r in rr], mode="lines+markers", name=f"control: refusal re-added, no persona, β={beta:g}",
            legendgroup=group, line=dict(color=color, width=2, dash="dash"), marker=dict(size=5, symbol="square"),
            customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
            hovertemplate=("control (no persona), re-added at layer %{x}<br>refusal %{y:.1f}% "
                           "[%{customdata[0]:.1f}, %{customdata[1]:.1f}] (%{customdata[2]}/%{customdata[3]})"
                           "<extra>control β=" + f"{beta:g}</extra>")), row=1, col=1)

    # generation-confirmed cells: judged refusal rate of full replies
    if confirm:
        cr = [_rate(c.get("refusal")) for c in confirm]
        ft = [_rate(c.get("first_token")) for c in confirm]
        y = [r[0] for r in cr]
        fig.add_trace(go.Scatter(
            x=[c["layer"] for c in confirm], y=y, mode="markers+text", name="confirmed by generation (judged replies)",
            marker=dict(symbol="diamond", size=13, color=COLORS["confirm"], line=dict(color="white", width=1.5)),
            error_y=_err(y, [r[1] for r in cr], [r[2] for r in cr]) | dict(color=COLORS["confirm"]),
            text=[c.get("cell", "") for c in confirm], textposition="middle right",
            textfont=dict(size=11, color=COLORS["confirm"]),
            customdata=[[c.get("cell", ""), r[1], r[2], r[3], r[4], c.get("beta"), f[0]] for c, r, f in
                        zip(confirm, cr, ft)],
            hovertemplate=("%{customdata[0]} cell: re-added at layer %{x}, β=%{customdata[5]}<br>judged refusal "
                           "%{y:.1f}% [%{customdata[1]:.1f}, %{customdata[2]:.1f}] (%{customdata[3]}/%{customdata[4]})"
                           "<br>first token: %{customdata[6]:.1f}%<extra>generated + judged</extra>")),
            row=1, col=1)

    # restoration row
    for y, key in ((0, "persona"), (1, "baseline")):
        fig.add_hline(y=y, line=dict(color=COLORS[key], width=1, dash="dot"), row=2, col=1,
                      exclude_empty_subplots=False)
    rng = _clip_band(rest_all, lo=-0.1, hi=1.1)
    any_rest = False
    for beta, color in zip(betas, shades):
        rows = _at_beta(gating, beta)
        x = [g["layer"] for g in rows]
        pt = [g.get("restoration") for g in rows]
        if not any(_finite(v) for v in pt):
            continue
        any_rest = True
        ci = [(g.get("restoration_ci") or [None, None]) for g in rows]
        ys, sym = _clipped_points(pt, rng)
        ci_lo = [min(max(c[0], rng[0]), rng[1]) if _finite(c[0]) else None for c in ci]
        ci_hi = [min(max(c[1], rng[0]), rng[1]) if _finite(c[1]) else None for c in ci]
        fig.add_trace(go.Scatter(
            x=x, y=ys, mode="lines+markers", name=f"restoration, β={beta:g}", legendgroup=f"gating β={beta:g}",
            showlegend=False, line=dict(color=color, width=2), marker=dict(size=7, symbol=sym),
            error_y=_err(ys, ci_lo, ci_hi) | dict(color=_rgba(color, 0.6)),
            customdata=[[_fmt(p, ".2f"), _ci_text(*c)] for p, c in zip(pt, ci)],
            hovertemplate=("re-added at layer %{x}<br>restoration %{customdata[0]} %{customdata[1]}"
                           "<br>(0 = persona level, 1 = baseline level)<extra>β=" + f"{beta:g}</extra>")),
            row=2, col=1)
    if not any_rest:
        # an invisible trace gives the empty panel's axes data (plotly draws the panel's
        # shapes with NaN coordinates on an axis pair without any trace)
        fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[0, 0], mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip"), row=2, col=1)
        b, p = _rate(sweep.get("baseline"))[0], _rate(sweep.get("persona"))[0]
        _no_data(fig, f"restoration undefined: baseline and persona refusal rates are equal on the sweep subset "
                      f"({_fmt_pct(b)} vs {_fmt_pct(p)})", xref="x2 domain", yref="y2 domain", x=0.5, y=0.5)
        rng = (-0.1, 1.1)
    fig.update_yaxes(range=list(rng), row=2, col=1)
    fig.add_annotation(x=1, xref="x2 domain", y=1, yref="y2", text="baseline level", showarrow=False, xanchor="right",
                       yanchor="bottom", font=dict(size=10, color=COLORS["baseline"]))
    fig.add_annotation(x=1, xref="x2 domain", y=0, yref="y2", text="persona level", showarrow=False, xanchor="right",
                       yanchor="top", font=dict(size=10, color=COLORS["persona"]))

    # score row: mean first-token refusal log-odds (continuous; moves even when no greedy
    # first token flips, so gating shows up here before it shows in the rates)
    for key, name in (("baseline", "baseline"), ("persona", "persona only")):
        rec = sweep.get(key) or {}
        if _finite(rec.get("score_mean")):
            fig.add_hline(y=rec["score_mean"], line=dict(color=COLORS[key], width=1, dash="dot"), row=3, col=1,
                          exclude_empty_subplots=False)
            fig.add_annotation(x=1, xref="x3 domain", y=rec["score_mean"], yref="y3", text=f"{name} level",
                               showarrow=False, xanchor="right", yanchor="bottom",
                               font=dict(size=10, color=COLORS[key]))
    series = ((gating, betas, shades, "solid", "persona + refusal"),
              (control, cbetas, _series(COLORS["control"], len(cbetas)), "dash", "control"))
    for rows_all, betas_k, colors, dash, label in series:
        for beta, color in zip(betas_k, colors):
            rows = _at_beta(rows_all, beta)
            x = [g["layer"] for g in rows]
            y = [g.get("score_mean") for g in rows]
            if not any(_finite(v) for v in y):
                continue
            ci = [(g.get("score_ci") or [None, None]) for g in rows]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=f"{label} log-odds, β={beta:g}",
                legendgroup=("gating" if label.startswith("persona") else "control") + f" β={beta:g}",
                showlegend=False, line=dict(color=color, width=2, dash=dash), marker=dict(size=5),
                error_y=_err(y, [c[0] for c in ci], [c[1] for c in ci]) | dict(color=_rgba(color, 0.5)),
                customdata=[[_fmt(v, ".2f"), _ci_text(*c), _fmt(g.get("score_restoration"), ".2f"),
                             _ci_text(*(g.get("score_restoration_ci") or [None, None]))] for v, c, g in
                            zip(y, ci, rows)],
                hovertemplate=("re-added at layer %{x}<br>mean log-odds %{customdata[0]} %{customdata[1]}"
                               "<br>score restoration %{customdata[2]} %{customdata[3]}<extra>" + label
                               + f" β={beta:g}</extra>")),
                row=3, col=1)

    _persona_marker(fig, P, rows=[1, 2, 3], label=False)
    _layers_axis(fig, layers)
    fig.update_yaxes(title_text=_RATE_AXIS + "<br><sup>greedy first token is a refusal token</sup>",
                     range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="restoration<br><sup>0 = persona, 1 = baseline</sup>", row=2, col=1)
    fig.update_yaxes(title_text="refusal log-odds<br><sup>first token, mean ± 95% CI</sup>", row=3, col=1)
    fig.update_xaxes(title_text="layer where the refusal direction is re-added (resid_pre index)", row=3, col=1)
    sub = (f"n = {n} harmful prompts (sweep subset) · persona α = {_fmt(steering.get('persona_alpha'), 'g')} at "
           f"layer {P} · refusal direction from layer {(results.get('refusal_direction') or {}).get('layer')} · "
           f"strengths in units of s = {_fmt(steering.get('s'), '.3g')}")
    _style(fig, f"Re-adding refusal under persona steering, layer by layer — {_model_id(results)}", sub)
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.12, yanchor="top", font=dict(size=11)),
                      margin=dict(r=20, b=130))
    return fig


# ============================================================================ dose-response
def alpha_figure(results: dict) -> go.Figure:
    """Dose–response of persona steering, and what it costs in coherence.

    Top: first-token refusal rate on the harmful sweep prompts as the persona strength α
    grows (α = 0 is the unsteered baseline), with Wilson 95% bands. Bottom: on harmless
    prompts, the share of degenerate replies (gibberish, repetition) and of refusals, with
    95% error bars, judged from generated replies. The dashed line marks the α the study
    uses. A good operating point has low refusal on top and near-zero degenerate replies
    below: suppression that comes from incoherence is not a persona effect.
    """
    rows = sorted(results.get("alpha_sweep") or [], key=lambda r: r["alpha"])
    sweep = results.get("sweep") or {}
    coh0 = results.get("coherence_baseline")
    alpha_used = (results.get("steering") or {}).get("persona_alpha")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.09,
                        subplot_titles=("harmful prompts: refusal (first token)",
                                        "harmless prompts: coherence of generated replies"))
    if not rows:
        _no_data(fig, "no α sweep in these results")
        return _style(fig, "Persona strength: no data")
    pts = ([(0.0, sweep.get("baseline"))] if sweep.get("baseline") else []) + [(r["alpha"], r) for r in rows]
    x = [a for a, _ in pts]
    rr = [_rate(r) for _, r in pts]
    _band(fig, x, [r[1] for r in rr], [r[2] for r in rr], COLORS["persona"], "refusal", row=1, col=1)
    fig.add_trace(go.Scatter(
        x=x, y=[r[0] for r in rr], mode="lines+markers", name="refusal, harmful prompts (first token)",
        legendgroup="refusal", line=dict(color=COLORS["persona"], width=2.5), marker=dict(size=8),
        customdata=[[r[1], r[2], r[3], r[4]] for r in rr],
        hovertemplate=("α = %{x}<br>refusal %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                       "(%{customdata[2]}/%{customdata[3]})<extra>harmful</extra>")), row=1, col=1)
    cpts = ([(0.0, coh0)] if coh0 else []) + [(r["alpha"], r.get("coherence")) for r in rows]
    cx = [a for a, _ in cpts]
    for key, name, color, dash in (("degenerate", "degenerate replies, harmless prompts", COLORS["degenerate"], "solid"),
                                   ("refusal", "refusals, harmless prompts", COLORS["harmless"], "dot")):
        cr = [_rate((c or {}).get(key)) for _, c in cpts]
        y = [r[0] for r in cr]
        fig.add_trace(go.Scatter(
            x=cx, y=y, mode="lines+markers", name=name, line=dict(color=color, width=2, dash=dash),
            marker=dict(size=7), error_y=_err(y, [r[1] for r in cr], [r[2] for r in cr]) | dict(color=color),
            customdata=[[r[1], r[2], r[3], r[4]] for r in cr],
            hovertemplate=("α = %{x}<br>" + key + " %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           "(%{customdata[2]}/%{customdata[3]})<extra>harmless</extra>")), row=2, col=1)
    if _finite(alpha_used):
        for r in (1, 2):
            ann = dict(annotation=dict(text=f"α used = {alpha_used:g}", font=dict(size=11)),
                       annotation_position="top right") if r == 1 else {}
            fig.add_vline(x=alpha_used, line=dict(color="#444", width=1, dash="dash"), row=r, col=1,
                          exclude_empty_subplots=False, **ann)
    fig.update_yaxes(title_text=_RATE_AXIS, range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="share of replies (%)", range=[-3, 103], row=2, col=1)
    fig.update_xaxes(title_text="persona strength α (× common norm s)", row=2, col=1)
    n_h = rr[0][4] if rr else None
    n_c = next((r[4] for r in (_rate((c or {}).get("degenerate")) for _, c in cpts) if r[4]), None)
    _style(fig, f"Persona strength: refusal suppression vs coherence — {_model_id(results)}",
           f"harmful: n = {n_h} sweep prompts · harmless: n = {n_c} prompts · α = 0 is the unsteered model · "
           f"persona at layer {_persona_layer(results)}")
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.13, yanchor="top"),
                      margin=dict(b=110))
    return fig


# ============================================================================ outcomes
def outcomes_figure(results: dict) -> go.Figure:
    """What the replies look like with and without the compliant persona.

    Replies to the evaluation harmful prompts, generated and judged: the share refused,
    complied with and degenerate, baseline (blue) vs persona steering (vermillion), with
    Wilson 95% error bars. The last pair is the cheap proxy the sweeps use (greedy first
    token is a refusal token). The box quotes the paper's numbers on a much larger model
    for comparison: small models often refuse less at baseline, so compare the *drop*, not
    the levels.
    """
    cats = [("refusal", "refused"), ("compliance", "complied"), ("degenerate", "degenerate"),
            ("first_token", "first token is a refusal token")]
    fig = go.Figure()
    n = None
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona steering")):
        rec = results.get(key) or {}
        rr = [_rate(rec.get(c)) for c, _ in cats]
        n = n or next((r[4] for r in rr if r[4]), None)
        y = [r[0] for r in rr]
        fig.add_trace(go.Bar(
            x=[label for _, label in cats], y=y, name=name, marker_color=COLORS[key],
            error_y=_err(y, [r[1] for r in rr], [r[2] for r in rr]) | dict(color="#333"), offsetgroup=key,
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
        _no_data(fig, "no baseline/persona evaluation in these results")
    steering = results.get("steering") or {}
    fig.add_annotation(xref="paper", yref="paper", x=1.0, y=-0.15, xanchor="right", yanchor="top", align="left",
                       showarrow=False, bgcolor="rgba(255,255,255,0.9)", bordercolor="#bbb", borderwidth=1,
                       borderpad=6, font=dict(size=12),
                       text=f"For comparison — {PAPER_NOTE.replace(': ', ':<br>', 1)}")
    fig.add_shape(type="line", xref="x", yref="paper", x0=2.5, x1=2.5, y0=0, y1=1,
                  line=dict(color="#bbb", width=1, dash="dot"))
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.06, scattermode="group", scattergap=0.25)
    fig.update_yaxes(title_text="share of harmful prompts (%)", range=[0, 108])
    fig.update_xaxes(title_text="judged outcome of the generated reply   |   first-token proxy")
    _style(fig, f"Baseline vs compliant persona on harmful prompts — {_model_id(results)}",
           f"n = {n} evaluation prompts · persona α = {_fmt(steering.get('persona_alpha'), 'g')} at layer "
           f"{_persona_layer(results)} · judge: {results.get('judge', 'n/a')} · error bars: Wilson 95%",
           legend_bottom=False)
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.15, yanchor="top"),
                      margin=dict(b=120))
    return fig


# ============================================================================ heatmap
def heatmap_figure(results: dict) -> go.Figure:
    """Does the answer depend on where the persona is injected?

    Each row is a persona layer (steering added there), each column a layer where the
    refusal direction is re-added (strength β); the cell is the first-token refusal rate
    (%) on the sweep prompts. The narrow left column is the persona-only rate for that
    row (no re-add): the level re-adding has to beat. The orange bar in each row separates
    re-add layers at or before the row's persona layer (left) from those after it
    (right). Gating predicts low values left of the bar and high values right of it in
    every row.
    """
    hm = results.get("heatmap") or {}
    pl = list(hm.get("persona_layers") or [])
    rl = list(hm.get("refusal_layers") or [])
    rate = hm.get("refusal_rate") or []
    score = hm.get("score_mean") or []
    only = hm.get("persona_only") or []
    fig = make_subplots(rows=1, cols=2, column_widths=[0.1, 0.9], shared_yaxes=True, horizontal_spacing=0.025)
    if not pl or not rl:
        _no_data(fig, "no heatmap in these results")
        return _style(fig, "Persona layer × re-add layer: no data")
    z = [[_pct(v) for v in row] for row in rate]
    n = next((o.get("n") for o in only if o), None)
    y = list(range(len(pl)))
    ylab = [f"persona @ {p}" for p in pl]
    oz = [[_rate(o)[0]] for o in only]
    fig.add_trace(go.Heatmap(
        z=oz, x=["persona only"], y=y, coloraxis="coloraxis", texttemplate="%{z:.0f}%", textfont=dict(size=12),
        customdata=[[[_rate(o)[1], _rate(o)[2], p]] for o, p in zip(only, pl)],
        hovertemplate=("persona at layer %{customdata[2]}, no re-add<br>refusal %{z:.1f}% "
                       "[%{customdata[0]:.1f}, %{customdata[1]:.1f}]<extra>persona only</extra>"),
        xgap=2, ygap=2), row=1, col=1)
    custom = [[[p, "before" if l < p else ("at" if l == p else "after"),
                _fmt(score[i][j] if i < len(score) and j < len(score[i]) else None, ".2f")]
               for j, l in enumerate(rl)] for i, p in enumerate(pl)]
    cell_font = 12 if len(rl) <= 14 else (9 if len(rl) <= 28 else 0)  # no labels once cells get too narrow
    fig.add_trace(go.Heatmap(
        z=z, x=rl, y=y, coloraxis="coloraxis", texttemplate="%{z:.0f}%" if cell_font else None,
        textfont=dict(size=cell_font or 9), customdata=custom,
        hovertemplate=("persona at layer %{customdata[0]}, refusal re-added at layer %{x} "
                       "(%{customdata[1]} persona)<br>refusal %{z:.1f}%<br>mean first-token refusal log-odds "
                       "%{customdata[2]}<extra></extra>"),
        xgap=2, ygap=2), row=1, col=2)
    # persona-layer ticks (in the main panel's layer coordinates)
    srt = sorted(rl)
    mids = [(u + v) / 2 for u, v in zip(srt, srt[1:])]
    half_lo = (srt[1] - srt[0]) / 2 if len(srt) > 1 else 0.5
    half_hi = (srt[-1] - srt[-2]) / 2 if len(srt) > 1 else 0.5
    edges = [srt[0] - half_lo] + mids + [srt[-1] + half_hi]
    fig.update_xaxes(range=[edges[0], edges[-1]], row=1, col=2)
    for i, p in enumerate(pl):
        # boundary between re-add layers at/before the persona layer and those after it
        k = sum(1 for l in srt if l <= p)
        fig.add_shape(type="line", x0=edges[k], x1=edges[k], y0=i - 0.5, y1=i + 0.5, xref="x2", yref="y2",
                      line=dict(color=COLORS["persona"], width=3))
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, cmax=100,
                                     colorbar=dict(title=dict(text="refusal<br>rate (%)", side="top"),
                                                   ticksuffix="%", len=0.9, thickness=14)))
    fig.update_yaxes(tickmode="array", tickvals=y, ticktext=ylab, title_text="persona steering layer", row=1, col=1)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_xaxes(title_text="refusal re-added at layer (resid_pre index)", tickmode="array", tickvals=rl,
                     row=1, col=2)
    fig.update_xaxes(tickangle=0, row=1, col=1)
    _style(fig, f"Persona layer × re-add layer: first-token refusal rate — {_model_id(results)}",
           f"n = {n} sweep prompts · re-add strength β = {_fmt(hm.get('beta'), 'g')} · persona α = "
           f"{_fmt((results.get('steering') or {}).get('persona_alpha'), 'g')} · orange bar: cells to its right re-add "
           f"refusal after the row's persona layer")
    fig.update_layout(margin=dict(l=120))
    fig.update_yaxes(ticks="", showline=False, row=1, col=2)
    return fig


# ============================================================================ projections
def projections_figure(results: dict) -> go.Figure:
    """Is refusal still *computed* under the persona, even when it is not *expressed*?

    At every layer, the last prompt token's residual is projected onto that layer's own
    refusal direction (unit diff-in-means, harmful − harmless). Lines are means over
    prompts with normal 95% bands: harmful prompts without steering (blue), harmful
    prompts with persona steering (vermillion) and harmless prompts (green). The two
    harmful lines coincide before the persona layer by construction. If, after it, the
    vermillion line stays near the blue one while the refusal rate collapses, the model
    still represents "this is harmful" and the persona blocks its expression; if it falls
    to the green line, the persona erased the representation itself.
    """
    pr = results.get("projections") or {}
    layers = list(pr.get("layers") or [])
    P = _persona_layer(results)
    fig = go.Figure()
    if not layers:
        _no_data(fig, "no projections in these results")
        return _style(fig, "Computed vs expressed: no data")
    # the unsteered harmful line is drawn wider underneath, so it shows around the persona
    # line where the two coincide (every layer before the persona layer)
    keys = (("harmful_baseline", "harmful, no steering", COLORS["baseline"], "solid", 5),
            ("harmful_persona", "harmful, persona steering", COLORS["persona"], "solid", 2),
            ("harmless_baseline", "harmless, no steering", COLORS["harmless"], "dash", 2.5))
    for key, name, color, dash, width in keys:
        recs = pr.get(key) or []
        if not recs:
            continue
        m = [r.get("mean") if r else None for r in recs]
        lo = [(r.get("ci") or [None, None])[0] if r else None for r in recs]
        hi = [(r.get("ci") or [None, None])[1] if r else None for r in recs]
        _band(fig, layers, lo, hi, color, key, alpha=0.14)
        fig.add_trace(go.Scatter(
            x=layers, y=m, mode="lines+markers", name=name, legendgroup=key, line=dict(color=color, width=width, dash=dash),
            marker=dict(size=6), customdata=[[_fmt(a, ".3g"), _fmt(b, ".3g"), (r or {}).get("n")] for a, b, r in
                                             zip(lo, hi, recs)],
            hovertemplate=("layer %{x}<br>mean projection %{y:.3g} [%{customdata[0]}, %{customdata[1]}]"
                           "<br>n = %{customdata[2]}<extra>" + name + "</extra>")))
    rl = (results.get("refusal_direction") or {}).get("layer")
    if _finite(rl):
        fig.add_vline(x=rl, line=dict(color=COLORS["baseline"], width=1, dash="dot"),
                      annotation=dict(text=f"selected refusal direction (layer {rl})", font=dict(size=11,
                                      color=COLORS["baseline"])),
                      annotation_position="bottom left" if rl > (min(layers) + max(layers)) / 2 else "bottom right")
    _persona_marker(fig, P)
    _layers_axis(fig, layers)
    fig.update_xaxes(title_text=_LAYER_AXIS)
    fig.update_yaxes(title_text="projection on the layer's refusal direction<br><sup>residual-stream units, "
                                "last prompt token</sup>")
    n = next((r.get("n") for r in (pr.get("harmful_baseline") or []) if r), None)
    nh = next((r.get("n") for r in (pr.get("harmless_baseline") or []) if r), None)
    _style(fig, f"Computed vs expressed: refusal-direction projection per layer — {_model_id(results)}",
           f"harmful: n = {n} sweep prompts · harmless: n = {nh} · direction: {pr.get('direction', 'n/a')} · "
           f"bands: 95% CI of the mean")
    fig.update_layout(legend=dict(x=0.01, xanchor="left", y=0.99, yanchor="top"))
    return fig


# ============================================================================ knockout
def knockout_figure(results: dict) -> go.Figure:
    """Which layers does the persona need to suppress refusal?

    With persona steering on, the persona direction is projected out of ``resid_pre``
    over a window of consecutive layers (x); bars are the first-token refusal rate with
    Wilson 95% error bars. Grey bars project out a random direction over the same window
    (the control: ablating *something* should not matter). Dotted lines are the baseline
    and the persona-only rates. A persona bar that climbs back toward the baseline, while
    the random bar stays at the persona level, marks a window the persona's effect runs
    through. The shaded window contains the injection layer.
    """
    ko = list(results.get("knockout") or [])
    sweep = results.get("sweep") or {}
    P = _persona_layer(results)
    fig = go.Figure()
    if not ko:
        _no_data(fig, "no knockout in these results")
        return _style(fig, "Persona knockout: no data")
    windows = sorted({(k["start"], k["end"]) for k in ko})
    labels = [f"{a}–{b - 1}" for a, b in windows]
    for kind, name, color in (("persona", "persona direction projected out", COLORS["persona"]),
                              ("random", "random direction projected out (control)", COLORS["random"])):
        by = {(k["start"], k["end"]): k for k in ko if k.get("direction") == kind}
        rr = [_rate(by.get(w)) for w in windows]
        y = [r[0] for r in rr]
        fig.add_trace(go.Bar(
            x=labels, y=y, name=name, marker_color=color, error_y=_err(y, [r[1] for r in rr], [r[2] for r in rr])
            | dict(color="#333"),
            customdata=[[r[1], r[2], r[3], r[4], _fmt((by.get(w) or {}).get("restoration"), ".2f"),
                         _ci_text(*((by.get(w) or {}).get("restoration_ci") or [None, None]))]
                        for r, w in zip(rr, windows)],
            hovertemplate=("layers %{x} ablated<br>refusal %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}] "
                           "(%{customdata[2]}/%{customdata[3]})<br>restoration %{customdata[4]} %{customdata[5]}"
                           "<extra>" + kind + "</extra>")))
    for key, name in (("baseline", "baseline (no steering)"), ("persona", "persona only")):
        r, lo, hi, k, n = _rate(sweep.get(key))
        if r is None:
            continue
        fig.add_hline(y=r, line=dict(color=COLORS[key], dash="dot", width=2), layer="below")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines",
                                 name=f"{name}: {r:.0f}% [{lo:.0f}, {hi:.0f}]",
                                 line=dict(color=COLORS[key], dash="dot", width=2)))
    if P is not None:
        for i, (a, b) in enumerate(windows):
            if a <= P < b:
                fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=COLORS["late"], line_width=0, layer="below",
                              annotation=dict(text=f"contains persona layer {P}", font=dict(size=11)),
                              annotation_position="top")
    fig.update_layout(barmode="group", bargap=0.3)
    fig.update_yaxes(title_text=_RATE_AXIS + "<br><sup>greedy first token, persona steering on</sup>",
                     range=[0, 105])
    w = results.get("resolved_layers", {}).get("knockout_window")
    fig.update_xaxes(title_text=f"layers where the direction is projected out (window of {w}, resid_pre)")
    n = next((k.get("n") for k in ko), None)
    _style(fig, f"Persona-direction knockout by window of layers — {_model_id(results)}",
           f"n = {n} sweep prompts · persona α = {_fmt((results.get('steering') or {}).get('persona_alpha'), 'g')} "
           f"at layer {P} · error bars: Wilson 95%")
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.16, yanchor="top"),
                      margin=dict(b=120))
    return fig


# ============================================================================ patching
def _patch_metric(results: dict) -> tuple[str, str]:
    rows = results.get("patching") or []
    if any(_finite(r.get("restoration")) for r in rows):
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
    rows = list(results.get("patching") or [])
    P = _persona_layer(results)
    metric, metric_text = _patch_metric(results)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.1,
                        subplot_titles=("all post-instruction positions patched", "one position patched at a time"))
    if not rows:
        _no_data(fig, "no patching in these results")
        return _style(fig, "Activation patching: no data")
    n_post = max(len(r["positions"]) for r in rows)
    full = sorted((r for r in rows if len(r["positions"]) == n_post and n_post > 1), key=lambda r: r["layer"])
    single = [r for r in rows if len(r["positions"]) == 1]
    if n_post == 1:  # only one post-instruction position: both views coincide
        full, single = sorted(rows, key=lambda r: r["layer"]), rows
    vals = [r.get(metric) for r in rows] + [c for r in rows for c in (r.get(metric + "_ci") or [])]
    rng = _clip_band(vals, lo=-0.1, hi=1.1)
    for c in (1, 2):
        fig.add_hline(y=0, line=dict(color=COLORS["persona"], width=1, dash="dot"), row=1, col=c,
                      exclude_empty_subplots=False)
        fig.add_hline(y=1, line=dict(color=COLORS["baseline"], width=1, dash="dot"), row=1, col=c,
                      exclude_empty_subplots=False)

    def add(x, recs, name, color, col, dash="solid", showlegend=True, group=None):
        pt = [r.get(metric) for r in recs]
        ci = [(r.get(metric + "_ci") or [None, None]) for r in recs]
        ys, sym = _clipped_points(pt, rng)
        clo = [min(max(c[0], rng[0]), rng[1]) if _finite(c[0]) else None for c in ci]
        chi = [min(max(c[1], rng[0]), rng[1]) if _finite(c[1]) else None for c in ci]
        fig.add_trace(go.Scatter(
            x=x, y=ys, mode="lines+markers", name=name, legendgroup=group or name, showlegend=showlegend,
            line=dict(color=color, width=2, dash=dash), marker=dict(size=7, symbol=sym),
            error_y=_err(ys, clo, chi) | dict(color=_rgba(color, 0.6)),
            customdata=[[_fmt(p, ".2f"), _ci_text(*c), _pct(r.get("refusal_rate")), r["layer"],
                         ",".join(str(p) for p in r["positions"])] for p, c, r in zip(pt, ci, recs)],
            hovertemplate=("layer %{customdata[3]}, positions %{customdata[4]}<br>effect %{customdata[0]} "
                           "%{customdata[1]}<br>refusal rate %{customdata[2]:.1f}%<extra>" + name + "</extra>")),
            row=1, col=col)

    if full:
        add([r["layer"] for r in full], full, "all positions, per layer", COLORS["gating"], 1)
    single_layers = sorted({r["layer"] for r in single})
    shades = _series(COLORS["baseline"], len(single_layers))
    for l, color in zip(single_layers, shades):
        recs = sorted((r for r in single if r["layer"] == l), key=lambda r: r["positions"][0])
        add([r["positions"][0] for r in recs], recs, f"one position, layer {l}", color, 2)
    if full:
        _persona_marker(fig, P, rows=[1], col=1, label=False)
        _layers_axis(fig, [r["layer"] for r in full], row=1, col=1)
    positions = sorted({r["positions"][0] for r in single})
    if positions:
        fig.update_xaxes(tickmode="array", tickvals=positions, range=[min(positions) - 0.5, max(positions) + 0.5],
                         row=1, col=2)
    fig.update_yaxes(range=list(rng))
    fig.update_yaxes(title_text=f"normalized patching effect<br><sup>restoration {metric_text}: "
                                "0 = persona, 1 = baseline</sup>", row=1, col=1)
    fig.update_xaxes(title_text=_LAYER_AXIS + " patched", row=1, col=1)
    fig.update_xaxes(title_text="patched position (from the end; −1 = last prompt token)", row=1, col=2)
    n = next((r.get("n") for r in rows), None)
    _style(fig, f"Activation patching: unsteered → persona-steered run — {_model_id(results)}",
           f"n = {n} sweep prompts · effect {metric_text} · error bars: paired bootstrap 95% · triangles: "
           f"outside the axis (true value in hover)", legend_bottom=True)
    fig.update_layout(legend=dict(y=-0.17))
    return fig


# ============================================================================ cosine
def cosine_figure(results: dict) -> go.Figure:
    """Are the persona and refusal directions the same direction?

    Cosine similarity between the compliant-persona direction and the refusal direction
    (each layer's own diff-in-means) at every layer. The grey band holds 95% of cosines
    between random unit vectors and a fixed direction in this model's width: points
    inside it are indistinguishable from unrelated directions. A strongly negative cosine
    would mean "compliant persona" is little more than "minus refusal"; a cosine near zero
    means the persona suppresses refusal through a separate direction. Gaps are layers
    where one of the directions is exactly zero (e.g. layer 0 sees only the embedding).
    """
    cs = results.get("cosines") or {}
    layers = list(cs.get("layers") or [])
    cos = list(cs.get("cosine") or [])
    null = cs.get("null") or {}
    P = _persona_layer(results)
    fig = go.Figure()
    if not layers:
        _no_data(fig, "no cosines in these results")
        return _style(fig, "Persona vs refusal direction: no data")
    if _finite(null.get("lo")) and _finite(null.get("hi")):
        fig.add_hrect(y0=null["lo"], y1=null["hi"], fillcolor=_rgba(COLORS["random"], 0.22), line_width=0,
                      layer="below")
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", marker=dict(symbol="square", size=14,
                                                            color=_rgba(COLORS["random"], 0.4)),
            name=f"random null: 95% of {null.get('n', '?')} random unit vectors"))
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    inside = [(_finite(c) and null.get("lo", -2) <= c <= null.get("hi", 2)) for c in cos]
    fig.add_trace(go.Scatter(
        x=layers, y=cos, mode="lines+markers", name="cos(persona direction, refusal direction)",
        line=dict(color=COLORS["gating"], width=2.5), marker=dict(size=8, color=[
            "white" if i else COLORS["gating"] for i in inside], line=dict(color=COLORS["gating"], width=2)),
        connectgaps=False,
        customdata=[["inside the random null" if i else ("outside the random null" if _finite(c) else "")]
                    for i, c in zip(inside, cos)],
        hovertemplate="layer %{x}<br>cosine %{y:.3f}<br>%{customdata[0]}<extra></extra>"))
    missing = [l for l, c in zip(layers, cos) if not _finite(c)]
    if missing:
        fig.add_trace(go.Scatter(
            x=missing, y=[0] * len(missing), mode="markers", name="undefined (a direction is zero)",
            marker=dict(symbol="x-thin", size=10, line=dict(color="#888", width=2)),
            hovertemplate="layer %{x}: a direction is exactly zero here<extra></extra>"))
    rl = (results.get("refusal_direction") or {}).get("layer")
    if _finite(rl):
        fig.add_vline(x=rl, line=dict(color=COLORS["baseline"], width=1, dash="dot"),
                      annotation=dict(text=f"selected refusal layer {rl}", font=dict(size=11, color=COLORS["baseline"])),
                      annotation_position="bottom left" if rl > (min(layers) + max(layers)) / 2 else "bottom right")
    _persona_marker(fig, P)
    _layers_axis(fig, layers)
    v = [c for c in cos if _finite(c)] + [null.get("lo", 0), null.get("hi", 0)]
    span = max(0.3, max(abs(x) for x in v) * 1.15) if v else 1
    fig.update_yaxes(title_text="cosine similarity (−1 … 1)", range=[-min(1.05, span), min(1.05, span)])
    fig.update_xaxes(title_text=_LAYER_AXIS)
    d = (results.get("model") or {}).get("d_model")
    _style(fig, f"Persona direction vs refusal direction, per layer — {_model_id(results)}",
           f"d_model = {d} · hollow points lie inside the random null band · persona direction: "
           f"{(results.get('persona_direction') or {}).get('method', 'n/a')}")
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.16, yanchor="top"),
                      margin=dict(b=110))
    return fig


# ============================================================================ selection
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
        _no_data(fig, "no selection report")
        return _style(fig, title)
    scored = [c for c in cands if _finite(c.get("bypass"))]
    unscored = [c for c in cands if not _finite(c.get("bypass"))]
    vals = [c["bypass"] for c in scored] + [v for v in (selection_report.get("baseline_harmful"),
                                                        selection_report.get("baseline_harmless")) if _finite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = 0.08 * (hi - lo or 1.0)
    floor = lo - 1.5 * pad

    def is_chosen(c):
        return bool(chosen) and c.get("layer") == chosen.get("layer") and c.get("position") == chosen.get("position")

    def hover(c):
        parts = [f"layer {c.get('layer')}, position {c.get('position')}",
                 f"bypass {_fmt(c.get('bypass'), '.3f')}", f"induce {_fmt(c.get('induce'), '.3f')}",
                 f"KL {_fmt(c.get('kl'), '.3g')}"]
        if c.get("discarded"):
            parts.append(f"discarded: {c['discarded']}")
        elif is_chosen(c):
            parts.append("<b>chosen</b>")
        elif c.get("induce") is None:
            parts.append("not tested: a better candidate passed first")
        return "<br>".join(parts)

    positions = sorted({c.get("position") for c in cands})
    multi = len(positions) > 1
    shades = _series(COLORS["baseline"], len(positions))
    for pos, color in zip(positions, shades):
        pts = sorted((c for c in scored if c.get("position") == pos), key=lambda c: c["layer"])
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[c["layer"] for c in pts], y=[c["bypass"] for c in pts], mode="lines+markers",
            name=f"bypass score, position {pos}" if multi else "bypass score (candidate ablated)",
            line=dict(color=_rgba(color, 0.5), width=1.5),
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
    if chosen and _finite(chosen.get("bypass")):
        fig.add_trace(go.Scatter(
            x=[chosen["layer"]], y=[chosen["bypass"]], mode="markers+text", name=f"chosen: layer {chosen['layer']}",
            marker=dict(symbol="star", size=20, color=COLORS["chosen"], line=dict(color="#333", width=1)),
            text=[f"chosen (layer {chosen['layer']})"], textposition="top center", hovertext=[hover(chosen)],
            hoverinfo="text"))
    xs = [c.get("layer") for c in cands if _finite(c.get("layer"))]
    for key, name, color in (("baseline_harmful", "harmful, nothing ablated", "#444444"),
                             ("baseline_harmless", "harmless, nothing ablated", COLORS["harmless"])):
        v = selection_report.get(key)
        if _finite(v) and xs:
            fig.add_trace(go.Scatter(
                x=[min(xs) - 0.6, max(xs) + 0.6], y=[v, v], mode="lines", name=f"{name}: {v:.2f}",
                line=dict(color=color, dash="dot", width=2), hovertemplate=f"{name}: {v:.3f}<extra></extra>"))
    if xs:
        _layers_axis(fig, xs)
    fig.update_yaxes(title_text="bypass score (mean refusal log-odds,<br>harmful val prompts; lower = better)",
                     range=[floor - pad, hi + 2.5 * pad])
    fig.update_xaxes(title_text="candidate layer (resid_pre index)")
    _style(fig, title,
           f"{len(cands)} candidates · filters: induce ≥ {_fmt(settings.get('induce_threshold'), 'g')}, KL ≤ "
           f"{_fmt(settings.get('kl_threshold'), 'g')}, layer < {_fmt(settings.get('max_layer_fraction'), 'g')}·n_layers"
           f" · val prompts: {settings.get('n_harmful_val')} harmful, {settings.get('n_harmless_val')} harmless")
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.16, yanchor="top"),
                      margin=dict(b=120))
    return fig
