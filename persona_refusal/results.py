"""The results of a study, as a dict that prints a summary (gating study, refusal study).

Context
-------
:func:`persona_refusal.study.run_study` writes ``results.json`` and
:func:`persona_refusal.study.load_results` reads it back. Both return a
:class:`GatingResults`: a plain ``dict`` (index it, ``json.dump`` it, pass it to the figure
functions of :mod:`persona_refusal.analysis`) whose ``repr`` — and, in a notebook, its
HTML view — is a short summary instead of the whole nested dictionary::

    >>> results = load_results("runs/demo")        # doctest: +SKIP
    >>> results                                     # doctest: +SKIP
    GatingResults: persona gating of refusal — Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:q4_k_m
      refusal direction     layer 9, position -1 (norm 0.751)
      …

Nothing here loads a model or imports plotly.
"""

from __future__ import annotations

import html

from persona_refusal.formatting import fmt, rate_text

__all__ = ["GatingResults", "RefusalResults", "SummaryDict"]


class SummaryDict(dict):
    """A plain ``dict`` of results whose ``repr`` (and notebook HTML view) is a short summary.

    Subclasses say what the summary is: :attr:`TITLE` and :meth:`rows`.
    """

    __slots__ = ()
    TITLE = "results"
    """The first line's name of what the results are."""

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
        lines.append("  (a dict: keys " + ", ".join(sorted(self)[:6]) + (", …" if len(self) > 6 else "") +
                     "; figures: persona_refusal.analysis)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's plain-text display
        p.text(self.summary() if not cycle else f"{type(self).__name__}(...)")

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in self.rows())
        return (f"<div><b>{type(self).__name__}</b>: {html.escape(self.TITLE)} — {html.escape(str(self._model_id()))}"
                f"<table>{body}</table><small>A dict with the keys of <code>results.json</code>; figures: "
                f"<code>persona_refusal.analysis</code>.</small></div>")


class GatingResults(SummaryDict):
    """The results of a persona-gating study: a plain ``dict`` with a readable summary.

    Every key of ``results.json`` is there (``results["gating"]``,
    ``results["alpha_sweep"]`` …); only ``repr``, the notebook HTML view and
    :meth:`summary` are added. It serialises exactly like a dict.

    Example:
        >>> r = GatingResults({"model": {"model_id": "m", "n_layers": 4, "d_model": 64},
        ...                    "refusal_direction": {"layer": 1, "position": -1, "norm": 2.0},
        ...                    "baseline": {"refusal": {"k": 3, "n": 4, "rate": 0.75, "ci": [0.3, 0.95]}}})
        >>> print(r.summary().splitlines()[0])
        GatingResults: persona gating of refusal — m
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


class RefusalResults(SummaryDict):
    """The results of a refusal study (``persona-refusal refusal``): a plain ``dict`` with a
    readable summary — the chosen direction and the rule that chose it, the front's best
    judged point within the KL budget, and the test split's refusal under each edit.

    Example:
        >>> r = RefusalResults({"model": {"model_id": "m"}, "refusal_direction": {"layer": 9, "position": -1,
        ...                     "rule": "kl_budget", "norm": 1.1}})
        >>> print(r.summary().splitlines()[1])
          refusal direction  layer 9, position -1 (norm 1.1), chosen by kl_budget
    """

    __slots__ = ()
    TITLE = "refusal directions: the front, ablation vs ACE vs addition"

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
