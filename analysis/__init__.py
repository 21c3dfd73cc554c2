"""Figures and the HTML report of a persona-gating run (``persona_refusal.analysis``).

Context
-------
This package is the only place in the project that imports plotly. Everything here works
from a run folder written by :func:`persona_refusal.study.run_study` — its
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
from persona_refusal.analysis.report import build_report, render_report
from persona_refusal.analysis import refusal_report as _refusal_report  # noqa: F401  (registers the refusal study's report)
from persona_refusal.errors import RunFolderError
from persona_refusal.storage import (MANIFEST, atomic_write_bytes, atomic_write_text, check_output, file_kind,
                                     is_marked_png, mark_png, note_written, read_user_bytes)

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
    """Export every figure as PNG into ``out_dir`` (a fresh folder) in one kaleido session."""
    names = list(figs)
    paths = [out_dir / f"{n}.png" for n in names]
    sizes = [size_of(n) for n in names]
    def write(idx: list[int]) -> None:
        pio.write_images([figs[names[i]] for i in idx], [paths[i] for i in idx], format="png",
                         width=[sizes[i][0] for i in idx], height=[sizes[i][1] for i in idx], scale=1)

    def missing() -> list[int]:
        return [i for i, p in enumerate(paths) if not p.is_file() or p.stat().st_size == 0]

    try:
        write(list(range(len(names))))
        # kaleido reports a figure that timed out (a busy machine) in its return value, which
        # plotly drops: a missing file is the only sign. Those are tried once more, alone.
        if missing():
            write(missing())
        if missing():
            raise RuntimeError("kaleido wrote no PNG for " + ", ".join(names[i] for i in missing()))
        for p in paths:  # the mark that lets --copy-to replace them later
            atomic_write_bytes(p, mark_png(p.read_bytes()))
    except BaseException:
        for p in paths:  # no half set of PNGs
            p.unlink(missing_ok=True)
        raise
    return paths


def _run_folder(run_dir: str | os.PathLike) -> Path:
    """The run folder of ``run_dir``: the folder itself, or the folder of its ``results.json``."""
    if str(run_dir) == "":
        raise RunFolderError("the run folder is empty ('')", hint="give the run folder, e.g. runs/demo")
    p = Path(run_dir)
    if p.is_file():
        if p.name != "results.json":
            raise RunFolderError(f"{p} is a file, not a run folder",
                                 hint="give the run folder, or the path of its results.json")
        return p.parent
    return p


def _check_folder(p: Path, hint: str) -> None:
    if p.exists() and not p.is_dir():
        raise RunFolderError(f"{p} exists and is not a folder", hint=hint)


def _move_in(src: Path, dest: Path) -> None:
    """Every file of ``src`` renamed into ``dest`` (or ``src`` renamed to ``dest`` when absent),
    each recorded in the run folder's manifest; a link, pipe or folder in the way is refused."""
    names = sorted(f.name for f in src.iterdir())
    for name in names:
        kind = file_kind(dest / name)
        if kind not in (None, "file"):
            raise RunFolderError(f"{dest / name} is {kind}; the figures are written only as regular files",
                                 hint="move it away, then build the figures again")
    if not dest.exists():
        os.rename(src, dest)
    else:
        for name in names:
            os.replace(src / name, dest / name)
    for name in names:
        note_written(dest / name)


def _is_run_folder(p: Path) -> bool:
    """Whether ``p`` holds a run (a manifest, a run record or results)."""
    return any(file_kind(p / n) is not None for n in (MANIFEST, "config.json", "results.json"))


def _our_copy(p: Path) -> bool:
    """A file ``--copy-to`` wrote before: a report of this package, or a PNG figure of it (one
    that carries the package's mark, :func:`~persona_refusal.storage.mark_png`)."""
    if p.suffix == ".png":
        return is_marked_png(p)
    return p.name == "report.html" and b"results schema persona_refusal." in read_user_bytes(p, what="report")


def build_figures(run_dir: str | os.PathLike, *, png: bool = True, copy_to: str | os.PathLike | None = None) -> list[Path]:
    """Write every figure of a run folder as HTML (and PNG), plus ``report.html``.

    All or nothing: every figure and the report are drawn first, then written into a
    temporary folder inside the run folder and only then moved into ``figures/`` (files of
    ``figures/`` that this build does not write are kept). A malformed entry in
    ``results.json`` raises a one-line :class:`~persona_refusal.errors.RunFolderError`
    naming the figure and the key, and leaves ``figures/`` and ``report.html`` as they were.

    Args:
        run_dir: a run folder holding ``results.json``, or the path of that file.
        png: also export PNGs (needs Chrome/Chromium; without one, PNGs are skipped with
            a warning and everything else is still written).
        copy_to: also copy the PNGs and ``report.html`` into this folder (e.g. the
            repository's ``figures/``).

    Returns:
        The paths written, in order (figure HTML, ``plotly.min.js``, PNGs, the report,
        then the copies).
    """
    run_dir = _run_folder(run_dir)
    dest = None
    if copy_to is not None:
        if str(copy_to) == "":
            raise RunFolderError("the copy_to folder is empty ('')", hint="give copy_to / --copy-to a folder path")
        dest = Path(copy_to)
        _check_folder(dest, "give copy_to / --copy-to a folder path")
        check_output(dest, flag="--copy-to", folder=True, error=RunFolderError)
        if _is_run_folder(dest) and dest.resolve() != run_dir.resolve():
            raise RunFolderError(f"--copy-to {dest} is the folder of another run; its report and figures are not "
                                 f"replaced", hint="give --copy-to a folder that holds no run, e.g. figures/")
    results, figs = make_figures(run_dir, strict=True)  # raises on a malformed entry: nothing written yet
    report_text = render_report(results, figs, source=run_dir / "results.json")
    if dest is not None:  # before anything is written
        for name in [f"{n}.png" for n in figs] + ["report.html"]:
            check_output(dest / name, flag="--copy-to", ours=_our_copy, writer="persona-refusal figures",
                         error=RunFolderError)
    out_dir = run_dir / "figures"
    _check_folder(out_dir, "move that file away, then build the figures again")
    for p in (out_dir, run_dir / "report.html"):
        kind = file_kind(p)
        if kind not in (None, "file", "a folder"):
            raise RunFolderError(f"{p} is {kind}; the figures are written only as regular files and folders",
                                 hint="move it away, then build the figures again")
    pages = {}
    for name, fig in figs.items():
        w, h = size_of(name)
        pages[name] = pio.to_html(fig, include_plotlyjs="directory", full_html=True, default_width="100%",
                                  default_height=f"{h}px", config={"displaylogo": False,
                                                                   "toImageButtonOptions": {"width": w, "height": h}})

    js_path = out_dir / "plotly.min.js"
    js = get_plotlyjs()
    tmp = Path(tempfile.mkdtemp(prefix=".figures-", dir=run_dir))
    try:
        staged = tmp / "figures"
        staged.mkdir()
        for name, page in pages.items():
            atomic_write_text(staged / f"{name}.html", page)
        if not js_path.is_file() or js_path.stat().st_size != len(js.encode("utf-8")):
            atomic_write_text(staged / js_path.name, js)
        png_names: list[str] = []
        if png:
            browser = find_browser()
            if browser is None:
                log.warning("no Chrome/Chromium found: PNG figures skipped (install chromium, or set BROWSER_PATH); "
                            "HTML figures and the report are written")
            else:
                try:
                    png_names = [p.name for p in _write_pngs(figs, staged)]
                except Exception as e:  # a broken browser must not cost the HTML and the report
                    log.warning("PNG export failed (%s: %s): PNG figures skipped", type(e).__name__, e)
        atomic_write_text(tmp / "report.html", report_text)
        _move_in(staged, out_dir)
        os.replace(tmp / "report.html", run_dir / "report.html")
        note_written(run_dir / "report.html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    written = [out_dir / f"{name}.html" for name in pages] + [js_path]
    pngs = [out_dir / n for n in png_names]
    written += pngs
    report = run_dir / "report.html"
    written.append(report)
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        for p in pngs + [report]:
            written.append(atomic_write_bytes(dest / p.name, p.read_bytes()))
    return written
