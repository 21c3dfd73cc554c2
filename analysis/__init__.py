"""Figures and the HTML report of a persona-gating run (``persona_refusal.analysis``).

Context
-------
This package is the only place in the project that imports plotly. Everything here works
from a run folder written by :func:`persona_refusal.experiments.run_gating_study` — its
``results.json`` and ``directions/refusal_selection.json`` — and never loads a model, so
figures can be rebuilt anywhere, at any time::

    from persona_refusal.analysis import build_figures
    build_figures("runs/demo")            # figures/*.html, figures/*.png, report.html

or ``persona-refusal figures runs/demo``. The figure functions themselves
(:mod:`persona_refusal.analysis.figures`) are pure ``results dict -> go.Figure`` and can
be used in a notebook directly.

The figures are those registered in :data:`persona_refusal.analysis.figures.FIGURES` (one
module per figure in ``analysis/figures/``); :func:`make_figures` draws them all.

Files written by :func:`build_figures`:

* ``figures/NAME.html`` — one interactive figure per file. They share one copy of
  plotly.js, ``figures/plotly.min.js``, written next to them: the files open offline,
  and nine figures do not carry nine 4.7 MB copies of the library (a CDN link would
  break offline; inlining it would make the folder ~45 MB).
* ``figures/NAME.png`` — static images, when a Chrome/Chromium is available to kaleido.
* ``report.html`` — a single self-contained page (plotly.js inlined once) with the
  headline numbers, every figure with a caption, the configuration and example replies.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from persona_refusal.analysis import figures as _figures
from persona_refusal.analysis.drawing import make_figures
from persona_refusal.analysis.figures import *  # noqa: F403  (the figure functions, registry and colours)
from persona_refusal.analysis.figures import size_of
from persona_refusal.analysis.report import build_report
from persona_refusal.storage import atomic_write_bytes, atomic_write_text

__all__ = [*_figures.__all__, "make_figures", "build_figures", "build_report", "find_browser"]

log = logging.getLogger(__name__)


def find_browser() -> str | None:
    """Path of a Chrome/Chromium that kaleido can drive for PNG export, or ``None``.

    Honours ``BROWSER_PATH`` (as kaleido does), then looks where choreographer (kaleido's
    browser driver) looks, then on ``PATH``.
    """
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found:
            return str(found)
    except Exception:  # an API change in choreographer: fall back to PATH
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _write_pngs(figs: dict[str, go.Figure], out_dir: Path) -> list[Path]:
    """Export every figure as PNG in one kaleido session; atomic per file."""
    names = list(figs)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".png-", dir=out_dir) as tmp:
        tmp_paths = [Path(tmp) / f"{n}.png" for n in names]
        sizes = [size_of(n) for n in names]
        pio.write_images([figs[n] for n in names], tmp_paths, format="png", width=[w for w, _ in sizes],
                         height=[h for _, h in sizes], scale=1)
        for n, p in zip(names, tmp_paths):
            written.append(atomic_write_bytes(out_dir / f"{n}.png", p.read_bytes()))
    return written


def build_figures(run_dir: str | os.PathLike, *, png: bool = True, copy_to: str | os.PathLike | None = None) -> list[Path]:
    """Write every figure of a run folder as HTML (and PNG), plus ``report.html``.

    Args:
        run_dir: a run folder holding ``results.json``.
        png: also export PNGs (needs Chrome/Chromium; without one, PNGs are skipped with
            a warning and everything else is still written).
        copy_to: also copy the PNGs and ``report.html`` into this folder (e.g. the
            repository's ``figures/``).

    Returns:
        The paths written, in order (figure HTML, ``plotly.min.js``, PNGs, the report,
        then the copies).
    """
    run_dir = Path(run_dir)
    results, figs = make_figures(run_dir)
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    js_path = out_dir / "plotly.min.js"
    js = get_plotlyjs()
    if not js_path.is_file() or js_path.stat().st_size != len(js.encode("utf-8")):
        atomic_write_text(js_path, js)
    for name, fig in figs.items():
        w, h = size_of(name)
        html = pio.to_html(fig, include_plotlyjs="directory", full_html=True, default_width="100%",
                           default_height=f"{h}px", config={"displaylogo": False,
                                                            "toImageButtonOptions": {"width": w, "height": h}})
        written.append(atomic_write_text(out_dir / f"{name}.html", html))
    written.append(js_path)

    pngs: list[Path] = []
    if png:
        browser = find_browser()
        if browser is None:
            log.warning("no Chrome/Chromium found: PNG figures skipped (install chromium, or set BROWSER_PATH); "
                        "HTML figures and the report are written")
        else:
            try:
                pngs = _write_pngs(figs, out_dir)
            except Exception as e:  # a broken browser must not cost the HTML and the report
                log.warning("PNG export failed (%s: %s): PNG figures skipped", type(e).__name__, e)
        written += pngs

    report = build_report(run_dir, results=results, figures=figs)
    written.append(report)

    if copy_to is not None:
        dest = Path(copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        for p in pngs + [report]:
            written.append(atomic_write_bytes(dest / p.name, p.read_bytes()))
    return written

