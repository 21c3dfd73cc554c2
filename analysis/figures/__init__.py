"""Figures of the studies (persona gating; refusal directions), rebuilt from ``results.json`` alone.

Context
-------
Every figure function is pure: it takes the dictionary that
:func:`persona_refusal.study.run_study` writes to ``results.json`` (or, for
:func:`selection_figure`, the ``directions/refusal_selection.json`` report) and returns a
:class:`plotly.graph_objects.Figure`. Nothing loads a model or touches a tensor, so a run
folder copied to another machine still draws.

One module per figure, each registering its :class:`~.registry.Figure` (name, report
title and caption, export size, draw function, study stage) in :data:`FIGURES`; the
modules of this package are imported on import (any module whose name does not start
with ``_``), so a new figure is one new file here. :func:`get` looks one up by name.

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

import importlib
import pkgutil

from persona_refusal.analysis.figures._style import COLORS, PAPER_NOTE
from persona_refusal.analysis.figures.alpha import alpha_figure
from persona_refusal.analysis.figures.cosine import cosine_figure
from persona_refusal.analysis.figures.gating import gating_figure
from persona_refusal.analysis.figures.heatmap import heatmap_figure
from persona_refusal.analysis.figures.knockout import knockout_figure
from persona_refusal.analysis.figures.outcomes import outcomes_figure
from persona_refusal.analysis.figures.patching import patching_figure
from persona_refusal.analysis.figures.projections import projections_figure
from persona_refusal.analysis.figures.registry import (
    DEFAULT_SIZE, FIGURE_SIZES, FIGURES, STUDY_STAGES, FieldView, Figure, figures_of, get, register, size_of,
    unregister,
)
from persona_refusal.analysis.figures.selection import selection_figure

__all__ = [
    "COLORS",
    "PAPER_NOTE",
    "FIGURE_SIZES",
    "FIGURES",
    "DEFAULT_SIZE",
    "STUDY_STAGES",
    "figures_of",
    "Figure",
    "FieldView",
    "register",
    "unregister",
    "get",
    "size_of",
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

# Every figure module registers itself on import: import them all (the ones above
# only re-export their functions under the names this package has always had).
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")
