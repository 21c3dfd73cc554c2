"""The gating experiment as one function: persona steering on, the refusal direction
re-added layer by layer, how much refusal comes back.

Context
-------
:func:`gating_experiment` adds the persona direction at one layer (``α·s·p̂``) and, on top
of it, the refusal direction at each re-add layer in turn (``β·s·r̂``; both directions
rescaled to one norm ``s = |p|`` at the persona layer, as the study does). At every
point it measures refusal on the given prompts — by the greedy first token (one forward
pass per prompt) or by generated, judged replies — and reports the rate with its Wilson
interval and the *restoration* ``(rate − persona)/(baseline − persona)``: the share of
the persona's suppression that the re-add gives back (paired bootstrap interval over
prompts). Optionally: the control (the same re-adds without the persona) and *cells*
(sets of layers re-added together, such as early, late and a late pair).

It is the study's computation, not a copy of it: the per-layer loop and the restoration
arithmetic are :func:`persona_refusal.study.gating.readd.readd_sweep` (first token) and
:func:`~persona_refusal.study.gating.readd.judged_rows` (judged), which the study's
``gating`` and ``gating_judged`` stages call too. The study hands them its checkpointed,
mid-model runner (:meth:`StudyContext.sweep <persona_refusal.study.gating.context.StudyContext.sweep>`);
this function hands them a plain one. The result holds a view shaped like the study's
``results.json`` (:attr:`GatingExperiment.results`, a :class:`~persona_refusal.results.GatingResults`),
so :meth:`GatingExperiment.figure` is the report's own figure function
(:func:`persona_refusal.analysis.gating_figure`, or
:func:`~persona_refusal.analysis.figures.gating_judged.gating_judged_figure` for judged
replies) drawn from it. This module sits above the analysis layer for that reason.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from persona_refusal.checks import checked
from persona_refusal.analysis.figures.registry import get as get_figure
from persona_refusal.directions import Direction, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import JUDGES, Judge, Rate, first_token_outcome, judged_conditions
from persona_refusal.formatting import ci_text, fmt
from persona_refusal.interventions import AddVector, Intervention
from persona_refusal.results import GatingResults
from persona_refusal.study.gating.readd import agreement, judged_points, judged_rows, judged_stats, readd_sweep
from persona_refusal.study.stats import first_token_stats, point_stats

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["gating_experiment", "GatingExperiment"]

FIRST_TOKEN = "greedy first token is a refusal token"


@checked
@dataclass(frozen=True)
class GatingExperiment:
    """What :func:`gating_experiment` measured.

    Example:
        >>> exp = gating_experiment(cm, persona, refusal, prompts, layers=[4, 12, 20])   # doctest: +SKIP
        >>> [(r.layer, r.refusal_rate, r.restoration) for r in exp.rows]                 # doctest: +SKIP
        >>> exp.figure()                                                                  # doctest: +SKIP
    """

    results: GatingResults
    """The measurements shaped as the study's ``results.json`` (the keys ``model``,
    ``steering``, ``refusal_direction``, ``sweep`` and ``gating`` / ``gating_control`` for
    the first-token measure, ``gating_judged`` for judged replies): what the report's
    figures read."""
    measure: Literal["first_token", "judged"]
    """How refusal was measured."""

    @property
    def rows(self) -> list:
        """One row per (β, re-add layer), persona on: ``.layer``, ``.beta``, and for the
        first token ``.refusal_rate``, ``.ci``, ``.restoration``, ``.restoration_ci``,
        ``.score_mean``, ``.score_restoration`` …; for judged replies, per judge (``.strict``,
        ``.lenient``) ``.refusal`` and ``.restoration``, with ``.first_token`` alongside."""
        return self.results.gating if self.measure == "first_token" else self.results.gating_judged.layers

    @property
    def control(self) -> list:
        """The same re-adds without the persona (first token: one row per (β, layer);
        judged: one per (cell, β)); empty when ``control=False``."""
        got = self.results.gating_control if self.measure == "first_token" else self.results.gating_judged.control
        return got or []

    @property
    def cells(self) -> list:
        """One row per (cell, β): ``.cell``, ``.layers``, ``.beta`` and the statistics of a row."""
        return (self.results.get("gating_cells") if self.measure == "first_token"
                else self.results.gating_judged.cell_rows) or []

    @property
    def baseline(self) -> dict:
        """The unsteered model on the same prompts (first-token statistics, or per-judge rates)."""
        return self.results.sweep.baseline if self.measure == "first_token" else self.results.gating_judged.baseline

    @property
    def persona(self) -> dict:
        """Persona steering alone on the same prompts."""
        return self.results.sweep.persona if self.measure == "first_token" else self.results.gating_judged.persona

    def figure(self) -> "plotly.graph_objects.Figure":  # noqa: F821 (plotly: the analysis layer's)
        """The report's figure of this measure, drawn by the same function from :attr:`results`:
        ``gating`` (first token) or ``gating_judged`` (judged replies)."""
        return get_figure("gating" if self.measure == "first_token" else "gating_judged").draw(self.results)

    def table(self) -> list[tuple]:
        """``(what, β, refusal, restoration)`` text rows: the baseline and the persona alone,
        every layer, then every cell."""
        main = None if self.measure == "first_token" else self.results.gating_judged.judge

        def rate(r):
            rec = r if main is None else (r.get(main) or {}).get("refusal") or {}
            return repr(Rate(rec["k"], rec["n"])) if rec.get("n") else "n/a"

        def rest(r):
            rec = r if main is None else r.get(main) or {}
            return f"{fmt(rec.get('restoration'), '.2f')} {ci_text(*(rec.get('restoration_ci') or [None, None]))}"

        return ([("model as is", "", rate(self.baseline), ""), ("persona only", "", rate(self.persona), "")]
                + [(f"layer {r.layer}", fmt(r.beta, "g"), rate(r), rest(r)) for r in self.rows]
                + [(f"{c.cell} {list(c.layers)}", fmt(c.beta, "g"), rate(c), rest(c)) for c in self.cells])

    def summary(self) -> str:
        """A few lines: the set-up, the baseline and persona rates, every row."""
        st = self.results.steering
        how = FIRST_TOKEN if self.measure == "first_token" else f"judged replies ({self.results.gating_judged.judge})"
        model = self.results.model.model_id
        lines = [f"GatingExperiment — {model}: persona α = {fmt(st.persona_alpha, 'g')} × s at "
                 f"layer {st.persona_layer} (s = {fmt(st.s)}), refusal direction from layer "
                 f"{self.results.refusal_direction.layer}; refusal = {how}"]
        for w, b, r, x in self.table():
            lines.append((f"  {w:<18} {'β=' + b if b else '':<7} refusal {r:<30}" + (f" restoration {x}" if x else ""))
                         .rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.summary() if not cycle else "GatingExperiment(...)")

    def _repr_html_(self) -> str:
        head, *_ = self.summary().splitlines()
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(v))}</td>" for v in row)
                       + "</tr>" for row in self.table())
        return (f"<div><b>{html.escape(head)}</b><table><tr><th>re-add</th><th>β</th><th>refusal</th>"
                f"<th>restoration</th></tr>{body}</table><small>0 = persona level, 1 = baseline level; "
                f"<code>.figure()</code> draws it.</small></div>")


def _persona_at(persona: Direction | LayerDirections, layer: int) -> Direction:
    return persona.at(layer) if isinstance(persona, LayerDirections) else persona


def gating_experiment(chat_model: "ChatModel", persona: Direction | LayerDirections, refusal: Direction,
                      prompts: Sequence[str], *, layers: Sequence[int] | None = None, alpha: float = 3.0,
                      betas: Sequence[float] = (2.0,), persona_layer: int | None = None,
                      measure: Literal["first_token", "judged"] = "first_token",
                      cells: Mapping[str, Sequence[int]] | None = None, control: bool = True,
                      judge: str = "strict", judges: Mapping[str, Judge] | None = None, max_new_tokens: int = 64,
                      system: str | None = None, batch_size: int | None = None, n_boot: int = 1000, seed: int = 0,
                      progress: bool = True) -> GatingExperiment:
    """Re-add the refusal direction layer by layer under persona steering; how much refusal returns?

    Args:
        chat_model: the model.
        persona: the persona direction (:func:`persona_refusal.persona_direction`, one
            direction per layer, read at ``persona_layer``; or one :class:`Direction`).
        refusal: the refusal direction (:func:`persona_refusal.select_refusal_direction`).
        prompts: the harmful prompts every condition is measured on.
        layers: re-add layers (``resid_pre`` indices; default: every layer).
        alpha: persona strength, in multiples of ``s = |p|`` at the persona layer.
        betas: re-add strengths, in multiples of ``s``.
        persona_layer: where the persona is added (default: ``round(0.65·n_layers)`` for
            per-layer directions, as the study; a single direction's own layer).
        measure: ``"first_token"`` (greedy first token is a refusal token; one forward pass
            per prompt and point) or ``"judged"`` (generated replies of ``max_new_tokens``
            tokens, labelled by every judge of ``judges``; ``judge`` names the headline one).
        cells: named sets of layers re-added together (``{"early": [6], "late": [18],
            "paired": [18, 20]}``), each at every β.
        control: also run the re-adds without the persona (first token: every layer; judged:
            every cell).
        judges: name → judge (default: the built-in ``strict`` and ``lenient``).
        system, batch_size: how prompts are formatted and batched.
        n_boot, seed: the paired bootstrap of restoration.

    Returns:
        a :class:`GatingExperiment`: ``.rows`` (per layer: rate, interval, restoration),
        ``.cells``, ``.control``, ``.baseline``, ``.persona``, ``.figure()``, a summary.

    Raises:
        ConfigError: an unknown measure, a layer out of range, or a headline judge not among ``judges``.
    """
    cm, L = chat_model, chat_model.n_layers
    P = (round(0.65 * L) if isinstance(persona, LayerDirections) else persona.layer) if persona_layer is None \
        else persona_layer
    layers = list(range(L)) if layers is None else [int(l) for l in layers]
    for l in [P, *layers, *[l for ls in (cells or {}).values() for l in ls]]:
        cm.check_layer(l, what="a gating layer")
    p_at = _persona_at(persona, P)
    s = p_at.norm
    steer = AddVector(p_at.rescaled(s), float(alpha), layer=P)
    vec = refusal.rescaled(s)
    made: dict[tuple, Intervention] = {}  # one object per (β, layer): cells and layers share edits by identity

    def readd(b: float, l: int) -> Intervention:
        return made.setdefault((b, l), AddVector(vec, float(b), layer=l))

    betas = [float(b) for b in betas]
    view = {"model": {"model_id": cm.model_id, "n_layers": L, "d_model": cm.d_model},
            "refusal_direction": {"layer": refusal.layer, "position": refusal.position, "norm": refusal.norm},
            "steering": {"persona_layer": P, "persona_source_layer": p_at.layer, "persona_alpha": float(alpha),
                         "norm": "persona", "s": s}}
    boot = {"n_boot": n_boot, "seed": seed}
    if measure == "first_token":
        def run(points: Mapping[str, Sequence[Intervention]]) -> dict[str, dict]:
            out = {}
            for key, ivs in points.items():
                o = first_token_outcome(cm, list(prompts), ivs, system=system, batch_size=batch_size, progress=False)
                out[key] = {"refused": o.refused.tolist(), "scores": o.scores.tolist()}
            return out

        ref = run({"baseline": [], "persona": [steer]})
        reference = (ref["baseline"], ref["persona"])
        view["sweep"] = {"n": len(prompts), "baseline": first_token_stats(**ref["baseline"]),
                         "persona": first_token_stats(**ref["persona"]), "measure": FIRST_TOKEN}
        view["gating"] = readd_sweep(run, [steer], readd, betas, layers, reference=reference, **boot)
        view["gating_control"] = readd_sweep(run, [], readd, betas, layers, reference=None, **boot) if control else []
        got = run({f"{name}:{b}": [steer, *[readd(b, l) for l in ls]] for name, ls in (cells or {}).items()
                   for b in betas})
        view["gating_cells"] = [{"cell": name, "layers": list(ls), "beta": b,
                                 **point_stats(got[f"{name}:{b}"], reference, **boot)}
                                for name, ls in (cells or {}).items() for b in betas]
    elif measure == "judged":
        judges = dict(JUDGES if judges is None else judges)
        if judge not in judges:
            raise ConfigError(f"the headline judge {judge!r} is not among the judges {sorted(judges)}",
                              hint="name one of them, or add it to judges")
        cells = {name: list(ls) for name, ls in (cells or {}).items()}
        conds = {"baseline": [], "persona": [steer],
                 **judged_points([steer], readd, cells=cells, cell_betas=betas, control_betas=betas if control else [],
                                 layers=layers, layer_betas=betas)}
        gens = {k: g.to_dict() for k, g in judged_conditions(
            cm, list(prompts), conds, judge=judges[judge], judges=judges, system=system, max_new_tokens=max_new_tokens,
            batch_size=batch_size, desc="gating: judged", progress=progress).items()}
        base, pers = gens.pop("baseline"), gens.pop("persona")
        names = list(judges)
        view["gating_judged"] = {
            "n": len(prompts), "max_new_tokens": max_new_tokens, "judge": judge, "judges": names, "beta0": betas[0],
            "betas": betas, "alpha": float(alpha), "persona_layer": P, "cells": cells,
            "baseline": judged_stats(base, None, None, names, **boot),
            "persona": judged_stats(pers, None, None, names, **boot),
            **judged_rows(gens, cells, base, pers, names, **boot),
            "agreement": agreement([*gens.values(), base, pers], judge)}
    else:
        raise ConfigError(f"measure must be 'first_token' or 'judged', not {measure!r}")
    return GatingExperiment(GatingResults(view), measure)
