"""Load a run folder and draw every registered figure (:func:`make_figures`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import plotly.graph_objects as go

from persona_refusal.analysis.figures import FIGURES, Figure
from persona_refusal.experiments import load_results
from persona_refusal.storage import read_json

__all__ = ["make_figures"]

log = logging.getLogger(__name__)


def _figure_input(fig: Figure, run_dir: Path, results: dict, files: dict[str, dict]) -> dict | None:
    """What ``fig.draw`` reads: ``results``, plus the figure's extra files (``None`` if one is missing)."""
    if not fig.inputs:
        return results
    data = dict(results)
    for key, rel in fig.inputs:
        if rel not in files:
            path = run_dir / rel
            if not path.is_file():
                return None
            files[rel] = read_json(path)
        data[key] = files[rel]
    return data


def make_figures(run_dir: str | os.PathLike) -> tuple[dict, dict[str, go.Figure]]:
    """Load a run folder and draw every registered figure: ``(results, {name: figure})``.

    The figures come in the order of :data:`persona_refusal.analysis.figures.FIGURES`. A
    figure whose extra input file the run lacks (e.g. ``directions/refusal_selection.json``)
    is left out; one that fails to draw (e.g. a results file from an older version missing a
    field) is logged and left out; the others are still returned.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    files: dict[str, dict] = {}
    figs: dict[str, go.Figure] = {}
    for fig in list(FIGURES.values()):
        try:
            data = _figure_input(fig, run_dir, results, files)
            if data is not None:
                figs[fig.name] = fig.draw(data)
        except Exception as e:  # one bad figure must not cost the others
            log.warning("figure %r could not be drawn (%s: %s)", fig.name, type(e).__name__, e)
    return results, figs
