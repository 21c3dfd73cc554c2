"""Load a run folder and draw every registered figure (:func:`make_figures`).

A figure that fails to draw is either logged and left out (``strict=False``, what a
notebook wants) or a one-line :class:`~persona_refusal.errors.RunFolderError` that names
the figure and the ``results.json`` key (and entry) it cannot read (``strict=True``, what
:func:`persona_refusal.analysis.build_figures` uses, so that it writes all or nothing).
:func:`bad_results_error` finds that key by drawing again without one key at a time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go

from persona_refusal.analysis.figures import Figure, figures_of
from persona_refusal.errors import RunFolderError
from persona_refusal.experiments import load_results
from persona_refusal.storage import read_json
from persona_refusal.study.registry import kind_of_schema, registered

__all__ = ["make_figures", "bad_results_error", "find_bad_key", "study_of"]

log = logging.getLogger(__name__)

_MAX_NARROW = 2000
"""Longest list (or dict) searched entry by entry for the one a figure cannot read."""


def _draws(fn: Callable[[dict], Any], data: dict) -> bool:
    try:
        fn(data)
        return True
    except Exception:
        return False


def find_bad_key(fn: Callable[[dict], Any], data: dict) -> str | None:
    """The top-level key of ``data`` without which ``fn(data)`` no longer raises, narrowed
    to its entry when one entry is to blame: ``"gating"``, ``"gating" entry 3`` (lists count
    from 0, as in the JSON), ``"sweep" field 'n'``; ``None`` when no single key is to blame.

    Example:
        >>> find_bad_key(lambda d: [int(x) for x in d.get("a") or []], {"a": ["1", "x"], "b": 2})
        "'a' entry 1"
    """
    for key in list(data):
        rest = {k: v for k, v in data.items() if k != key}
        if not _draws(fn, rest):
            continue
        value = data[key]
        if isinstance(value, list) and len(value) <= _MAX_NARROW:
            for i in range(len(value)):
                if _draws(fn, {**data, key: value[:i] + value[i + 1:]}):
                    return f"{key!r} entry {i}"
        elif isinstance(value, dict) and len(value) <= _MAX_NARROW:
            for sub in value:
                if _draws(fn, {**data, key: {k: v for k, v in value.items() if k != sub}}):
                    return f"{key!r} field {sub!r}"
        return repr(key)
    return None


def bad_results_error(what: str, fn: Callable[[dict], Any], data: dict, error: BaseException,
                      source: str | os.PathLike) -> RunFolderError:
    """The one-line error for ``what`` (e.g. ``figure 'gating' cannot be drawn``) failing on
    ``data``: the key to blame (:func:`find_bad_key`), the exception, and where to fix it."""
    detail = " ".join(f"{type(error).__name__}: {error}".split())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    key = find_bad_key(fn, data)
    where = f"key {key} of {source}" if key else str(source)
    return RunFolderError(f"{what}: {where} is malformed ({detail})",
                          hint="fix or remove that entry; nothing was written and the figures folder is as it was")


def _figure_input(fig: Figure, run_dir: Path, results: dict, files: dict[str, dict], strict: bool) -> dict | None:
    """What ``fig.draw`` reads: ``results``, plus the figure's extra files (``None`` if one is missing)."""
    if not fig.inputs:
        return results
    data = dict(results)
    for key, rel in fig.inputs:
        if rel not in files:
            path = run_dir / rel
            if not path.is_file():
                return None
            try:
                files[rel] = read_json(path)
            except (ValueError, RecursionError, OSError) as e:
                if not strict:
                    raise
                raise RunFolderError(f"figure {fig.name!r} cannot be drawn: {path} is not readable JSON "
                                     f"({type(e).__name__})",
                                     hint="fix or remove that file; nothing was written and the figures folder is as "
                                          "it was") from None
        data[key] = files[rel]
    return data


def study_of(results: dict) -> str:
    """The study a results dict belongs to (by its schema; ``"gating"`` when unknown)."""
    kind = kind_of_schema(results.get("schema"))
    return kind.name if kind is not None else "gating"


def make_figures(run_dir: str | os.PathLike, *, strict: bool = False) -> tuple[dict, dict[str, go.Figure]]:
    """Load a run folder and draw every registered figure of its study: ``(results, {name: figure})``.

    The figures come in the order of :data:`persona_refusal.analysis.figures.FIGURES`. A
    figure whose extra input file the run lacks (e.g. ``directions/refusal_selection.json``)
    is left out. One that fails to draw (a malformed entry in ``results.json``) is logged
    and left out, the others still returned; with ``strict=True`` it raises a one-line
    :class:`~persona_refusal.errors.RunFolderError` naming the figure and the key instead.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    source = run_dir / "results.json" if run_dir.is_dir() else run_dir
    run_dir = source.parent  # a results.json path: its folder holds the extra input files
    files: dict[str, dict] = {}
    figs: dict[str, go.Figure] = {}
    ran = (results.get("run_info") or {}).get("stages")
    study = study_of(results)
    stages = registered(study)
    for fig in list(figures_of(study).values()):
        data = None
        if isinstance(ran, list) and fig.stage in stages and fig.stage not in ran:
            continue  # its stage did not run (a preset or --stages without it)
        if fig.needs is not None and not fig.needs(results):
            continue
        try:
            data = _figure_input(fig, run_dir, results, files, strict)
            if data is not None:
                figs[fig.name] = fig.draw(data)
        except RunFolderError:
            raise
        except Exception as e:  # one bad figure must not cost the others
            if strict:
                raise bad_results_error(f"figure {fig.name!r} cannot be drawn", fig.draw, dict(data or results), e, source) from None
            log.warning("figure %r could not be drawn (%s: %s)", fig.name, type(e).__name__, e)
    return results, figs
