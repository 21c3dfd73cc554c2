"""Several runs in one figure: restoration of refusal against relative depth.

Context
-------
A gating claim is about *where* in the network the re-added refusal direction acts, and
models differ in depth. :func:`cross_model_figure` puts every run on one axis, the re-add
layer over the model's number of blocks, with one line per run (model × protocol): the
judged restoration when the run has the judged gating sweep (``--preset paper``), else
the first-token restoration of the gating sweep. :func:`build_comparison` writes it from
run folders (``persona-refusal compare RUN… --out DIR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from persona_refusal.analysis import find_browser
from persona_refusal.analysis.figures._style import error_bars, legend_below, style
from persona_refusal.analysis.drawing import study_of
from persona_refusal.errors import PersonaRefusalError, RunFolderError
from persona_refusal.formatting import finite
from persona_refusal.storage import (atomic_write_bytes, atomic_write_text, check_output, is_marked_png, mark_png,
                                     read_user_bytes)
from persona_refusal.study.runner import load_results

__all__ = ["run_label", "restoration_by_depth", "cross_model_figure", "paper_table", "build_comparison"]

PAPER_ROWS = {
    "baseline": "97% (Llama-3.1-8B)",
    "persona": "2%",
    "early": "not restored",
    "late": "partly restored",
    "paired": "partly restored (more than late)",
    "harmless": "the re-added direction can cause refusal",
    "orthogonal": "not measured",
}
"""Zhong & Li (2026)'s findings, the column every run is read against."""

_LINE_COLORS = ("#7B2D8E", "#D55E00", "#0072B2", "#009E73", "#E69F00", "#CC79A7")


def run_label(results: Mapping) -> str:
    """``model · protocol``: the paper protocol when the run used the paper's layer rule."""
    model = str((results.get("model") or {}).get("model_id", "model")).split("/")[-1]
    cfg = results.get("config") or {}
    if cfg.get("layer_rule") != "paper":
        return f"{model} · package default protocol"
    rollouts = ((results.get("persona_direction") or {}).get("rollouts") or {}).get("balance", "first_k")
    personas = str(cfg.get("personas", "character"))
    personas = personas if "/" not in personas else personas.rsplit("/", 1)[-1]
    estimate = "first-k rollouts" if rollouts == "first_k" else "all in-character rollouts"
    return f"{model} · paper protocol · {personas}, {estimate}"


def restoration_by_depth(results: Mapping) -> dict:
    """Per re-add layer: relative depth, restoration and its interval, and what measured it.

    Example:
        >>> r = {"model": {"n_layers": 4}, "gating": [{"layer": 2, "beta": 2.0, "restoration": 0.5,
        ...                                             "restoration_ci": [0.1, 0.9]}]}
        >>> restoration_by_depth(r)["depth"], restoration_by_depth(r)["measure"]
        ([0.5], 'first token, β = 2')
    """
    L = (results.get("model") or {}).get("n_layers")
    gj = results.get("gating_judged") or {}
    if gj.get("layers"):
        judge = gj.get("judge")
        rows = sorted(gj["layers"], key=lambda r: r["layer"])
        vals = [((r.get(judge) or {}).get("restoration"), (r.get(judge) or {}).get("restoration_ci") or [None, None])
                for r in rows]
        measure = f"judged ({judge}, {gj.get('max_new_tokens')} tokens), β = {gj.get('beta0'):g}"
        cells = [{"cell": c["cell"], "beta": c["beta"], "depth": max(c["layers"]) / L,
                  "restoration": (c.get(judge) or {}).get("restoration"),
                  "ci": (c.get(judge) or {}).get("restoration_ci") or [None, None]}
                 for c in gj.get("cell_rows") or [] if c["beta"] == gj.get("beta0")]
    else:
        gating = results.get("gating") or []
        if not gating:
            return {"depth": [], "restoration": [], "ci": [], "measure": "none", "cells": []}
        beta = max(g["beta"] for g in gating)
        rows = sorted([g for g in gating if g["beta"] == beta], key=lambda r: r["layer"])
        vals = [(r.get("restoration"), r.get("restoration_ci") or [None, None]) for r in rows]
        measure, cells = f"first token, β = {beta:g}", []
    persona = (results.get("steering") or {}).get("persona_layer")
    return {"depth": [r["layer"] / L for r in rows], "layer": [r["layer"] for r in rows],
            "restoration": [v[0] for v in vals], "ci": [v[1] for v in vals], "measure": measure, "cells": cells,
            "persona_depth": persona / L if finite(persona) else None, "n_layers": L}


def cross_model_figure(runs: Mapping[str, Mapping]) -> go.Figure:
    """One line per run: restoration (0: none, 1: all of the persona → baseline gap)
    against relative depth of the re-add layer, with 95% intervals; the paired late cell
    and the other cells as symbols; a dotted vertical line at each run's persona layer."""
    fig = go.Figure()
    for (label, results), color in zip(runs.items(), _LINE_COLORS * 4):
        d = restoration_by_depth(results)
        y = d["restoration"]
        fig.add_trace(go.Scatter(
            x=d["depth"], y=y, mode="lines+markers", name=f"{label} ({d['measure']})", legendgroup=label,
            line=dict(color=color, width=2.2), marker=dict(size=6),
            error_y=error_bars(y, [c[0] for c in d["ci"]], [c[1] for c in d["ci"]]) | dict(color=color),
            customdata=d.get("layer"),
            hovertemplate="layer %{customdata} (depth %{x:.2f})<br>restoration %{y:.2f}<extra>" + label + "</extra>"))
        for c in d["cells"]:
            if finite(c["restoration"]):
                fig.add_trace(go.Scatter(
                    x=[c["depth"]], y=[c["restoration"]], mode="markers", legendgroup=label, showlegend=False,
                    marker=dict(symbol={"early": "diamond", "late": "square", "paired": "star"}.get(c["cell"], "x"),
                                size=13, color=color, line=dict(color="white", width=1)),
                    hovertemplate=f"{label}: {c['cell']} cell<br>restoration %{{y:.2f}}<extra></extra>"))
        if d.get("persona_depth") is not None:
            fig.add_vline(x=d["persona_depth"], line=dict(color=color, width=1, dash="dot"))
    for yv in (0.0, 1.0):
        fig.add_hline(y=yv, line=dict(color="#bbb", width=1, dash="dot"))
    fig.update_xaxes(title_text="relative depth of the re-add layer (layer / n_layers)", range=[-0.02, 1.0])
    fig.update_yaxes(title_text="restoration of refusal")
    style(fig, "Refusal re-added under the persona, across models and protocols",
          "symbols: the paper's cells (◆ early, ■ late, ★ paired late) at β₀ · dotted lines: each run's persona layer")
    return legend_below(fig, -0.14, 150)


def _rate(rec: Mapping | None) -> str:
    if not rec or rec.get("n") in (None, 0):
        return "—"
    lo, hi = rec["ci"]
    return f"{100 * rec['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({rec['k']}/{rec['n']})"


def _rest(row: Mapping, judge: str) -> str:
    r = row.get(judge) or {}
    p, ci = r.get("restoration"), r.get("restoration_ci") or [None, None]
    if not finite(p):
        return ""
    return f"; restoration {p:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if finite(ci[0]) and finite(ci[1]) else "")


def paper_table(runs: Mapping[str, Mapping]) -> str:
    """A Markdown table: each run's judged refusal (headline judge, then the other) in the
    paper's conditions at β₀, next to the paper's findings. Runs without the judged sweep
    report their judged baseline / persona rates and leave the cells empty."""
    labels = list(runs)
    head = "| | " + " | ".join(labels) + " | Zhong & Li 2026 |\n|---|" + "---|" * (len(labels) + 1) + "\n"
    rows = {k: [] for k in PAPER_ROWS}
    for label in labels:
        r = runs[label]
        gj = r.get("gating_judged") or {}
        if not gj:
            rows["baseline"].append(_rate((r.get("baseline") or {}).get("refusal")) + " (strict)")
            rows["persona"].append(_rate((r.get("persona") or {}).get("refusal")) + " (strict)")
            confirm = {c["cell"]: c for c in r.get("gating_confirm") or []}
            for k in ("early", "late", "paired"):
                c = confirm.get(k)
                rows[k].append(f"{_rate(c.get('refusal'))} (strict; layer {c['layer']}, β = {c['beta']:g}, "
                               f"sweep subset)" if c else "not measured")
            rows["harmless"].append("not measured")
            rows["orthogonal"].append("not measured")
            continue
        main = gj["judge"]
        other = [j for j in gj.get("judges", []) if j != main]

        def both(row: Mapping) -> str:
            text = f"{_rate((row.get(main) or {}).get('refusal'))} ({main})"
            for j in other:
                text += f"; {_rate((row.get(j) or {}).get('refusal'))} ({j})"
            return text

        rows["baseline"].append(both(gj["baseline"]))
        rows["persona"].append(both(gj["persona"]))
        cells = {c["cell"]: c for c in gj.get("cell_rows") or [] if c["beta"] == gj.get("beta0")}
        for k in ("early", "late", "paired"):
            c = cells.get(k)
            rows[k].append(f"{both(c)}{_rest(c, main)}" if c else "—")
        ch = gj.get("control_harmless") or {}
        hc = {c["cell"]: c for c in ch.get("cells") or [] if c["beta"] == gj.get("beta0")}
        rows["harmless"].append("; ".join(
            f"{k}: {_rate((hc[k].get(main) or {}).get('refusal'))}" for k in ("early", "late", "paired") if k in hc)
            + f" (unedited {_rate(((ch.get('baseline') or {}).get(main) or {}).get('refusal'))})" if hc
            else "not measured")
        po = {v["variant"]: v for v in (r.get("persona_orthogonal") or {}).get("variants") or []}
        rows["orthogonal"].append("; ".join(
            f"{name}: {_rate((po[key].get(main) or {}).get('refusal'))}" for key, name in
            (("minus:injection", "minus own-layer refusal component"), ("minus:study", "minus study direction's"),
             ("minus:random", "minus matched random")) if key in po) if po else "not measured")
    names = {"baseline": "harmful prompts refused, no steering", "persona": "… with compliant-persona steering",
             "early": "… + refusal re-added early (β₀)", "late": "… + refusal re-added late (β₀)",
             "paired": "… + refusal re-added paired late (β₀)",
             "harmless": "harmless prompts refused with refusal re-added, no persona (β₀)",
             "orthogonal": "harmful prompts refused under the persona without its refusal component"}
    body = "".join(f"| {names[k]} | " + " | ".join(rows[k]) + f" | {PAPER_ROWS[k]} |\n" for k in PAPER_ROWS)
    return head + body


def _our_comparison(p: Path) -> bool:
    """A file ``compare`` wrote before (by its content: a plotly page, the JSON of depths,
    the Markdown table, a PNG carrying the package's mark)."""
    if p.suffix == ".png":
        return is_marked_png(p)
    head = read_user_bytes(p, what="file")[:1 << 20]
    if p.suffix == ".json":
        data = json.loads(head.decode("utf-8"))
        return isinstance(data, dict) and all(isinstance(v, dict) and "depth" in v for v in data.values())
    if p.suffix == ".md":
        return b"|" in head
    return b"plotly" in head


def build_comparison(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     labels: Sequence[str] | None = None, png: bool = True) -> list[Path]:
    """Write ``cross_model.html`` (+ ``.json`` data, + ``.png`` with a browser) into ``out``."""
    if not run_dirs:
        raise RunFolderError("no run folders to compare", hint="give one or more run folders or results.json files")
    runs: dict[str, dict] = {}
    for i, rd in enumerate(run_dirs):
        res = load_results(rd)
        if study_of(res) != "gating":
            raise RunFolderError(f"{rd} holds the results of a {study_of(res)} study: compare draws persona-gating runs",
                                 hint="give the --out folders of `persona-refusal run`; a refusal study's figures "
                                      "and report are in its own folder (persona-refusal figures DIR)")
        try:
            label = labels[i] if labels and i < len(labels) else run_label(res)
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            raise RunFolderError(f"{rd}: results.json has a malformed entry ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:100]})",
                                 hint="rebuild it with persona-refusal run, or leave that run out") from None
        while label in runs:
            label += "′"
        runs[label] = res
    try:  # every value drawn before anything is written; a malformed entry is one line
        fig = cross_model_figure(runs)
        data = {label: restoration_by_depth(r) | {"source": str(rd)}
                for (label, r), rd in zip(runs.items(), run_dirs)}
        table = paper_table(runs)
    except PersonaRefusalError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, ZeroDivisionError) as e:
        raise RunFolderError(f"a results.json of {', '.join(map(str, run_dirs))} has a malformed entry "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:100]})",
                             hint="rebuild it with persona-refusal run, or leave that run out") from None
    out = check_output(out, flag="--out", folder=True, error=RunFolderError, example="figures")
    names = ["cross_model.html", "cross_model.json", "cross_model.md", "cross_model.png"]
    for name in names:
        check_output(out / name, flag="--out", ours=_our_comparison, writer="persona-refusal compare",
                     error=RunFolderError)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "cross_model.html", out / "cross_model.json", out / "cross_model.md"]
    atomic_write_text(written[0], pio.to_html(fig, include_plotlyjs="cdn", full_html=True))
    atomic_write_text(written[1], json.dumps(data, indent=1, sort_keys=True) + "\n")
    atomic_write_text(written[2], table)
    if png and find_browser():
        png_path = out / "cross_model.png"
        atomic_write_bytes(png_path, mark_png(pio.to_image(fig, format="png", width=1100, height=650)))
        written.append(png_path)
    return written
