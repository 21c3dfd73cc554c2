"""The figure registry: every figure of a study, registered once by the module that draws it.

Context
-------
A figure is a :class:`Figure`: its file name, the report's section title and caption, the
size it is exported at, the pure ``results dict -> go.Figure`` function that draws it, and
the study and stage whose results it shows. Each module of
:mod:`persona_refusal.analysis.figures` calls :func:`register` for its own figure(s), and
everything else — :func:`persona_refusal.analysis.make_figures`, the report's figure list,
titles, captions and the PNG sizes — is read from :data:`FIGURES`. Adding a figure is one
new module in ``analysis/figures/`` (found automatically)::

    register(Figure(name="my_plot", title="My plot", caption="What it shows.", size=(1000, 600),
                    draw=my_plot_figure, stage="gating", order=85))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable

import plotly.graph_objects as go

__all__ = ["Figure", "FIGURES", "FIGURE_SIZES", "DEFAULT_SIZE", "STUDY_STAGES", "register", "unregister", "get", "prose",
           "size_of", "FieldView", "figures_of"]

STUDY_STAGES = ("refusal", "persona", "calibrate", "eval", "alpha_sweep", "gating", "gating_judged", "sensitivity",
                "persona_orthogonal", "confirm",
                "heatmap", "knockout", "patching", "projections", "cosines", "persona_sets")
"""The stages of the gating study that figures draw, in the order they run."""

DEFAULT_SIZE = (1000, 600)
"""Export size of a figure that is not registered (width, height in pixels)."""


@dataclass(frozen=True)
class Figure:
    """One figure of the study, as the report and ``build_figures`` see it.

    Example:
        >>> f = Figure(name="demo", title="Demo", caption="A caption.", size=(800, 500),
        ...            draw=lambda results: go.Figure(), stage="gating")
        >>> isinstance(f({}), go.Figure)   # calling a Figure draws it
        True
    """

    name: str
    """File name (``figures/NAME.html``, ``NAME.png``) and key in every figure mapping."""
    title: str
    """Section title in the report (numbered there by the figure's place in :data:`FIGURES`)."""
    caption: str
    """Caption in the report: HTML, with ``str.format`` fields filled from the results
    (``{P}`` persona layer, ``{alpha}`` persona α, ``{n_eval}`` evaluation prompts,
    ``{agree_b}``/``{agree_p}`` first-token agreement, baseline/persona)."""
    size: tuple[int, int]
    """``(width, height)`` in pixels of the PNG export (and the height of the HTML div)."""
    draw: Callable[[dict], go.Figure]
    """Pure function from the results dict (plus :attr:`inputs`) to the figure."""
    stage: str
    """The stage whose results it draws (a registered stage of :attr:`study`; for the gating
    study one of :data:`STUDY_STAGES`)."""
    order: int = 100
    """Place in the report and in :data:`FIGURES` (lower first; ties by name)."""
    inputs: tuple[tuple[str, str], ...] = ()
    """Extra files of the run folder the figure reads, as ``(key, path relative to the run
    folder)`` pairs: each is loaded and passed to :attr:`draw` under ``key`` alongside the
    results; the figure is left out of a run that lacks one of them."""
    needs: Callable[[dict], bool] | None = None
    """Whether these results hold what the figure draws (``None``: always drawn); a figure
    whose stage ran with nothing to show (e.g. the judged sweep switched off) is left out."""
    study: str = "gating"
    """The study whose results it draws (``"gating"`` or ``"refusal"``): a run folder's
    report shows the figures of its own study only."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"figure name must be letters, digits and '_' (a file name), got {self.name!r}")
        if not callable(self.draw):
            raise TypeError(f"figure {self.name!r}: draw must be callable")

    def __call__(self, results: dict) -> go.Figure:
        """Draw the figure (``FIGURES["gating"](results)``, as when the registry held functions)."""
        return self.draw(results)


FIGURES: dict[str, Figure] = {}
"""Every registered figure by name, in report order (kept sorted by ``(order, name)``)."""


def prose(text: str) -> str:
    """A caption written as an indented triple-quoted block, as one line (runs of
    whitespace, newlines included, become one space)."""
    return " ".join(text.split())


def register(fig: Figure) -> Figure:
    """Add ``fig`` to :data:`FIGURES` (in its place by :attr:`Figure.order`) and return it.

    Raises:
        ValueError: a different figure is already registered under that name.
    """
    old = FIGURES.get(fig.name)
    if old is not None and old != fig:
        raise ValueError(f"a figure named {fig.name!r} is already registered (stage {old.stage!r})")
    items = sorted([*(f for f in FIGURES.values() if f.name != fig.name), fig], key=lambda f: (f.order, f.name))
    FIGURES.clear()
    FIGURES.update((f.name, f) for f in items)
    return fig


def figures_of(study: str) -> dict[str, Figure]:
    """The registered figures of one study, in report order."""
    return {name: f for name, f in FIGURES.items() if f.study == study}


def unregister(name: str) -> Figure:
    """Remove the figure ``name`` from :data:`FIGURES` and return it (``KeyError`` if absent)."""
    return FIGURES.pop(name)


def get(name: str) -> Figure:
    """The registered figure ``name`` (``KeyError``, listing the names, if there is none)."""
    try:
        return FIGURES[name]
    except KeyError:
        raise KeyError(f"no figure named {name!r}; registered: {', '.join(FIGURES)}") from None


def size_of(name: str) -> tuple[int, int]:
    """Export size of the figure ``name``, :data:`DEFAULT_SIZE` when it is not registered."""
    fig = FIGURES.get(name)
    return fig.size if fig is not None else DEFAULT_SIZE


class FieldView(Mapping):
    """``{name: getattr(figure, field)}`` over the registered figures: a live, read-only view
    of :data:`FIGURES` (never out of step with it).

    Example:
        >>> captions = FieldView("caption")   # what the report reads
    """

    def __init__(self, field: str) -> None:
        self._field = field

    def __getitem__(self, name: str):
        return getattr(FIGURES[name], self._field)

    def __iter__(self) -> Iterator[str]:
        return iter(FIGURES)

    def __len__(self) -> int:
        return len(FIGURES)

    def __repr__(self) -> str:
        return f"FieldView({self._field!r}: {dict(self)!r})"


FIGURE_SIZES: Mapping[str, tuple[int, int]] = FieldView("size")
"""Export size (width, height in pixels) of each figure (a live view of :data:`FIGURES`)."""
