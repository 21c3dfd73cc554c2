"""The results of a gating study, as a dict that prints a summary.

Context
-------
:func:`persona_refusal.experiments.run_gating_study` writes ``results.json`` and
:func:`persona_refusal.experiments.load_results` reads it back. Both return a
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

__all__ = ["GatingResults"]


class GatingResults(dict):
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
        info = self.get("run_info") or {}
        if info.get("total_seconds") is not None:
            rows.append(("run", f"{info.get('total_seconds')} s, finished {info.get('finished', 'n/a')}"))
        return rows

    def summary(self) -> str:
        """A few lines: model, refusal direction, baseline vs persona refusal with Wilson 95%
        intervals, and the early/late cells confirmed by generation.

        Example:
            >>> print(GatingResults({"model": {"model_id": "m"}}).summary())  # doctest: +ELLIPSIS
            GatingResults: persona gating of refusal — m
              model ...
        """
        model_id = (self.get("model") or {}).get("model_id", "unknown model")
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        lines = [f"GatingResults: persona gating of refusal — {model_id}"]
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        lines.append("  (a dict: keys " + ", ".join(sorted(self)[:6]) + (", …" if len(self) > 6 else "") +
                     "; figures: persona_refusal.analysis)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's plain-text display
        p.text(self.summary() if not cycle else "GatingResults(...)")

    def _repr_html_(self) -> str:
        model_id = (self.get("model") or {}).get("model_id", "unknown model")
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in self.rows())
        return (f"<div><b>GatingResults</b>: persona gating of refusal — {html.escape(str(model_id))}"
                f"<table>{body}</table><small>A dict with the keys of <code>results.json</code>; figures: "
                f"<code>persona_refusal.analysis</code>.</small></div>")
