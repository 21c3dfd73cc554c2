"""The results of a study, typed: attribute access to every ``results.json`` key, a summary.

Context
-------
:func:`persona_refusal.study.run_study` writes ``results.json`` and
:func:`persona_refusal.study.load_results` reads it back, as :class:`GatingResults` (the
persona-gating study) or :class:`RefusalResults` (the refusal study). Each key of
``results.json`` is an attribute, and so is every key of the objects inside it (each a
:class:`Record`; arrays are :class:`RecordList`); the registered stages' result
dataclasses describe which keys a study writes (:meth:`SummaryDict.stage` rebuilds one)::

    >>> results = load_results("runs/demo")                  # doctest: +SKIP
    >>> results.baseline.refusal.rate                        # doctest: +SKIP
    0.95
    >>> [(g.layer, g.refusal_rate) for g in results.gating]  # doctest: +SKIP
    >>> results.stage("eval").persona.refusal.ci             # doctest: +SKIP

The objects are plain ``dict`` and ``list`` underneath: ``results["gating"][0]["layer"]``
reads the same value, ``json.dump`` writes the same JSON, and the figure functions of
:mod:`persona_refusal.analysis` take them as they are. Their ``repr`` — and, in a notebook,
their HTML view — is a short summary instead of the whole nested dictionary::

    >>> results                                               # doctest: +SKIP
    GatingResults: persona gating of refusal — Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:q4_k_m
      refusal direction     layer 9, position -1 (norm 0.751)
      …

Nothing here loads a model or imports plotly.
"""

from __future__ import annotations

import html
from typing import Any, ClassVar

from persona_refusal.checks import checked
from persona_refusal.errors import ConfigError
from persona_refusal.formatting import fmt, rate_text

__all__ = ["GatingResults", "RefusalResults", "SummaryDict", "Record", "RecordList", "typed", "stage_keys",
           "HEADER_KEYS"]

HEADER_KEYS = ("schema", "model", "config", "resolved_layers", "prompt_sets", "judge", "randomness",
               "refusal_baseline", "run_info")
"""The keys every study's ``results.json`` holds besides its stages' keys (no stage
dataclass describes them: they read as :class:`Record`)."""


def typed(value: Any) -> Any:
    """``value`` with every JSON object in it (at any depth) made a :class:`Record` and
    every array a :class:`RecordList`; numbers and strings stay as they are.

    Example:
        >>> r = typed({"gating": [{"layer": 3, "refusal": {"rate": 0.5}}]})
        >>> r.gating[0].refusal.rate, r["gating"][0]["layer"]
        (0.5, 3)
    """
    if isinstance(value, dict):
        return value if isinstance(value, Record) else Record(value)
    if isinstance(value, list):
        return value if isinstance(value, RecordList) else RecordList(value)
    return value


class RecordList(list):
    """A JSON array of the results: a ``list`` whose objects are :class:`Record` s, also
    those appended, inserted or assigned later.

    Example:
        >>> rows = typed([{"layer": 1}])
        >>> rows.append({"layer": 2}); rows += [{"layer": 3}]
        >>> [r.layer for r in rows]
        [1, 2, 3]
    """

    __slots__ = ()

    def __init__(self, values=()) -> None:
        super().__init__(typed(v) for v in values)

    def append(self, value) -> None:
        super().append(typed(value))

    def insert(self, index, value) -> None:
        super().insert(index, typed(value))

    def extend(self, values) -> None:
        super().extend(typed(v) for v in values)

    def __iadd__(self, values):
        self.extend(values)
        return self

    def __setitem__(self, index, value) -> None:
        super().__setitem__(index, [typed(v) for v in value] if isinstance(index, slice) else typed(value))


class Record(dict):
    """A JSON object of the results: a ``dict`` whose keys are also attributes (``r.rate``
    is ``r["rate"]``); the objects inside it are records too.

    A key that is not a Python name (``"harmful/ablate"``, ``"2.0"``) or that names a dict
    method (``keys``, ``items``, ``values``, ``get`` …) is read by item only. A key the
    record lacks raises :class:`AttributeError` naming the keys it has. An object or array
    stored later (item assignment, ``update``, ``setdefault``) is typed too.

    Example:
        >>> r = Record({"k": 3, "n": 4, "ci": [0.3, 0.95]})
        >>> r.k / r.n, r.ci[0]
        (0.75, 0.3)
        >>> r.kk
        Traceback (most recent call last):
        ...
        AttributeError: no key 'kk' here (keys: ci, k, n)
    """

    __slots__ = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for k, v in self.items():
            if isinstance(v, (dict, list)) and not isinstance(v, (Record, RecordList)):
                dict.__setitem__(self, k, typed(v))

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, typed(value))

    def update(self, *args, **kwargs) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):
        self.update(other)
        return self

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(self._missing(name)) from None

    def _missing(self, name: str) -> str:
        keys = sorted(str(k) for k in self)
        return f"no key {name!r} here (keys: {', '.join(keys[:12])}{', …' if len(keys) > 12 else ''})"

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(k for k in self if isinstance(k, str) and k.isidentifier())})


class SummaryDict(Record):
    """A study's results: a :class:`Record` of the ``results.json`` keys whose ``repr`` (and
    notebook HTML view) is a short summary.

    A key that the study's registered stages (or :data:`HEADER_KEYS`) name but these
    results lack — the stage did not run — reads as ``None``, as ``results.get(key)``
    does; any other missing name raises :class:`AttributeError`. Subclasses say which
    study (:attr:`STUDY`) and what the summary is (:attr:`TITLE`, :meth:`rows`).
    """

    __slots__ = ()
    TITLE = "results"
    """The first line's name of what the results are."""
    STUDY: ClassVar[str] = "gating"
    """The registered study (:class:`~persona_refusal.study.registry.StudyKind` name) whose stages write these keys."""

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if not name.startswith("_") and (name in HEADER_KEYS or name in stage_keys(self.STUDY)):
            return None
        raise AttributeError(self._missing(name))

    @classmethod
    def of(cls, data: dict) -> "SummaryDict":
        """``data`` as these results: itself when it already is, else a typed copy (what the
        figure functions do with the plain dict they may be given).

        Example:
            >>> GatingResults.of({"sweep": {"n": 8}}).sweep.n
            8
        """
        return data if isinstance(data, cls) else cls(data)

    def stage(self, name: str):
        """The result dataclass of the stage ``name`` (e.g. ``EvalResult`` for ``"eval"``),
        rebuilt from these results: its fields are the keys that stage writes, holding the
        same records (its memory-only fields, tensors and directions, are ``None``).

        Raises:
            ConfigError: no such stage in this study, or these results lack its keys (it did not run).

        Example:
            >>> import persona_refusal.study  # the studies register their stages
            >>> r = GatingResults({"steering": {"s": 2.0, "persona_layer": 3}})
            >>> st = r.stage("steering")
            >>> type(st).__name__, st.steering.s
            ('SteeringResult', 2.0)
        """
        return _registry().get_stage(name, self.STUDY).result.from_json(self)

    def rows(self) -> list[tuple[str, str]]:  # pragma: no cover - overridden
        """The summary as ``(label, value)`` pairs."""
        return []

    def _model_id(self) -> str:
        return (self.get("model") or {}).get("model_id", "unknown model")

    def summary(self) -> str:
        """A few lines: what :meth:`rows` says, then the keys it holds."""
        rows = self.rows()
        width = max((len(k) for k, _ in rows), default=0)
        lines = [f"{type(self).__name__}: {self.TITLE} — {self._model_id()}"]
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        lines.append("  (keys are attributes: " + ", ".join(f".{k}" for k in sorted(self)[:6]) +
                     (", …" if len(self) > 6 else "") + "; figures: persona_refusal.analysis)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's plain-text display
        p.text(self.summary() if not cycle else f"{type(self).__name__}(...)")

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in self.rows())
        return (f"<div><b>{type(self).__name__}</b>: {html.escape(self.TITLE)} — {html.escape(str(self._model_id()))}"
                f"<table>{body}</table><small>The keys of <code>results.json</code>, as attributes; figures: "
                f"<code>persona_refusal.analysis</code>.</small></div>")


@checked
class GatingResults(SummaryDict):
    """The results of a persona-gating study, typed, with a readable summary.

    Every key of ``results.json`` is an attribute (``results.gating``,
    ``results.alpha_sweep`` …) and an item (``results["gating"]``); :meth:`stage` gives a
    stage's result dataclass; ``repr``, the notebook HTML view and :meth:`summary` show a
    summary. It serialises exactly like the dict it was read from. A key one of the study's
    stages writes but the run lacks reads as ``None`` once the studies are imported
    (:func:`~persona_refusal.study.load_results` imports them).

    Example:
        >>> import persona_refusal.study
        >>> r = GatingResults({"model": {"model_id": "m", "n_layers": 4, "d_model": 64},
        ...                    "refusal_direction": {"layer": 1, "position": -1, "norm": 2.0},
        ...                    "baseline": {"refusal": {"k": 3, "n": 4, "rate": 0.75, "ci": [0.3, 0.95]}}})
        >>> print(r.summary().splitlines()[0])
        GatingResults: persona gating of refusal — m
        >>> r.refusal_direction.layer, r.baseline.refusal.ci, r.gating is None
        (1, [0.3, 0.95], True)
        >>> import json; json.loads(json.dumps(r)) == dict(r)
        True
    """

    __slots__ = ()
    TITLE = "persona gating of refusal"

    def rows(self) -> list[tuple[str, str]]:
        """The summary as ``(label, value)`` pairs (what :meth:`summary` and the HTML view show).

        Example:
            >>> GatingResults({"refusal_direction": {"layer": 3}}).rows()[1]
            ('refusal direction', 'layer 3, position n/a (norm n/a)')
        """
        model = self.get("model") or {}
        rd = self.get("refusal_direction") or {}
        steering = self.get("steering") or {}
        norm = rd.get("norm")
        rows = [
            ("model", f"{model.get('model_id', 'unknown')} ({model.get('n_layers', '?')} layers, "
                      f"d_model {model.get('d_model', '?')})"),
            ("refusal direction", f"layer {rd.get('layer', 'n/a')}, position {rd.get('position', 'n/a')} "
                                  f"(norm {fmt(norm)})"),
        ]
        if steering:
            s = steering.get("s")
            rows.append(("persona steering", f"α = {steering.get('persona_alpha')} × s at layer "
                                             f"{steering.get('persona_layer')} (s = {fmt(s)}, "
                                             f"{steering.get('norm')} norm)"))
        rows.append(("refusal, baseline", rate_text((self.get("baseline") or {}).get("refusal"),
                                                     self.get("baseline_refusal_rate"), self.get("baseline_refusal_ci"))))
        rows.append(("refusal, persona", rate_text((self.get("persona") or {}).get("refusal"),
                                                    self.get("persona_refusal_rate"), self.get("persona_refusal_ci"))))
        deg = (self.get("persona") or {}).get("degenerate")
        if deg:
            rows.append(("degenerate, persona", rate_text(deg)))
        for cell in self.get("gating_confirm") or []:
            rows.append((f"persona + refusal at layer {cell.get('layer')} ({cell.get('cell')}, β = {cell.get('beta')})",
                         rate_text(cell.get("refusal"))))
        rows += _baseline_rows(self)
        info = self.get("run_info") or {}
        if info.get("total_seconds") is not None:
            rows.append(("run", f"{info.get('total_seconds')} s, finished {info.get('finished', 'n/a')}"))
        return rows


@checked
class RefusalResults(SummaryDict):
    """The results of a refusal study (``persona-refusal refusal``), typed as
    :class:`GatingResults` are (``results.front.candidates``, ``results.edits.conditions``),
    with a readable summary — the chosen direction and the rule that chose it, the front's best
    judged point within the KL budget, and the test split's refusal under each edit.

    Example:
        >>> r = RefusalResults({"model": {"model_id": "m"}, "refusal_direction": {"layer": 9, "position": -1,
        ...                     "rule": "kl_budget", "norm": 1.1}})
        >>> print(r.summary().splitlines()[1])
          refusal direction  layer 9, position -1 (norm 1.1), chosen by kl_budget
    """

    __slots__ = ()
    TITLE = "refusal directions: the front, ablation vs ACE vs addition"
    STUDY = "refusal"

    def rows(self) -> list[tuple[str, str]]:
        """The summary as ``(label, value)`` pairs.

        Example:
            >>> RefusalResults({}).rows()
            [('refusal direction', 'layer n/a, position n/a (norm n/a), chosen by n/a')]
        """
        rd = self.get("refusal_direction") or {}
        rows = [("refusal direction", f"layer {rd.get('layer', 'n/a')}, position {rd.get('position', 'n/a')} "
                                      f"(norm {fmt(rd.get('norm'))}), chosen by {rd.get('rule', 'n/a')}")]
        front = self.get("front") or {}
        if front:
            cands = [c for c in front.get("candidates") or [] if c.get("kind") == "single"]
            rows.append(("front (val)", f"{len(cands)} candidates, {len(front.get('judged_keys') or [])} judged on "
                                        f"{front.get('n_front')} prompts; KL budget {fmt(front.get('kl_budget'))}"))
            val = rd.get("val") or {}
            if val:
                rows.append(("chosen, val", f"judged refusal {rate_text(val.get('refusal'))}, KL {fmt(val.get('kl'))}"))
        add = self.get("addition") or {}
        if add:
            rows.append(("addition strength (val)", f"c = {fmt(add.get('coeff'))} at layer {add.get('layer')}"))
        edits = self.get("edits") or {}
        for c in edits.get("conditions") or []:
            if c.get("edit", "").startswith("rule:"):
                continue
            kl = (edits.get("kl") or {}).get(c["edit"]) or {}
            rows.append((f"test {c['set']}, {c['edit']}", f"refusal {rate_text(c.get('refusal'))}, degenerate "
                                                          f"{rate_text(c.get('degenerate'))}"
                                                          + (f", KL {fmt(kl.get('mean'))}"
                                                             if kl and c["set"] != "borderline" else "")))
        rows += _baseline_rows(self)
        info = self.get("run_info") or {}
        if info.get("total_seconds") is not None:
            rows.append(("run", f"{info.get('total_seconds')} s, finished {info.get('finished', 'n/a')}"))
        return rows


def _baseline_rows(results: dict) -> list[tuple[str, str]]:
    """The baseline check's row (:mod:`persona_refusal.study.baseline`), when the run made one."""
    rb = results.get("refusal_baseline")
    if not isinstance(rb, dict) or not rb.get("refusal"):
        return []
    text = rate_text(rb.get("refusal"))
    if rb.get("low_refusal"):
        text += f" — WARNING: below the {100 * rb.get('threshold', 0.2):.0f}% threshold, the model barely refuses"
    return [(f"unsteered refusal, harmful {rb.get('split', 'val')} (check)", text)]


_STAGE_KEYS: dict[str, frozenset[str]] = {}


_REGISTRY: Any = None
"""The stage registry (:mod:`persona_refusal.study.registry`), handed over by it when the studies
are imported: the results sit below the studies, and need only the stages' names and result
classes from them."""


def bind_registry(registry: Any) -> None:
    """Called by :mod:`persona_refusal.study.registry` on import; forgets cached key sets."""
    global _REGISTRY
    _REGISTRY = registry
    _STAGE_KEYS.clear()


def _registry() -> Any:
    if _REGISTRY is None:
        raise ConfigError("the studies are not loaded, so their stages are unknown",
                          hint="import persona_refusal.study first (load_results and run_study do)")
    return _REGISTRY


def stage_keys(study: str) -> frozenset[str]:
    """The ``results.json`` keys the registered stages of ``study`` write (none while the
    studies are not imported).

    Example:
        >>> import persona_refusal.study  # the studies register their stages
        >>> {"gating", "gating_control", "baseline"} <= stage_keys("gating")
        True
    """
    if _REGISTRY is None:
        return frozenset()
    if study not in _STAGE_KEYS:
        _STAGE_KEYS[study] = frozenset(k for st in _REGISTRY.registered(study).values() if st.result is not None
                                       for k in st.result.json_fields())
    return _STAGE_KEYS[study]
