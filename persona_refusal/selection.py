"""Selecting the refusal direction among diff-in-means candidates: Arditi et al.'s
filters, and named rules on a table of candidate scores.

Context
-------
Every candidate of a :class:`~persona_refusal.directions.DirectionGrid` is scored by the
first-token refusal score (log-odds of the refusal tokens) on held-out **harmful** prompts
with the candidate **ablated** at every layer ("bypass": lower is better). Candidates whose
**addition** at their own layer does not induce refusal on held-out **harmless** prompts,
whose ablation moves the harmless next-token distribution by KL > 0.1, or whose layer lies
in the last 20% of the model are discarded; the lowest bypass among the rest wins
(:func:`select_refusal_direction`, which measures lazily, best bypass first).

The refusal study (:mod:`persona_refusal.study.refusal`) measures *every* candidate instead
— a table of :class:`CandidateScores` — and picks from it by a named rule
(:func:`apply_rule`), recording which rule chose:

* ``"arditi"``: the filters above, on the table (with the ``relative`` fallback);
* ``"kl_budget"``: the lowest judged refusal after ablation among candidates whose
  ablation costs at most ``kl_budget`` nats of KL on harmless prompts (and whose replies
  stay coherent);
* ``"knee"``: the knee of the Pareto front of judged refusal against KL (log scale) — the
  front point farthest below the chord between its two ends.

:func:`pareto_front` finds the candidates no other beats on both refusal and KL.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import torch

from persona_refusal.checks import checked
from persona_refusal import ops
from persona_refusal.directions import Direction, DirectionGrid, check_model
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import last_logits, refusal_scores
from persona_refusal.interventions import Ablate, AddVector

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["SelectionReport", "select_refusal_direction", "CandidateScores", "RuleSettings", "RuleChoice", "RULES",
           "apply_rule", "pareto_front", "knee_index", "arditi_reason"]

log = logging.getLogger(__name__)


@checked
@dataclass
class SelectionReport:
    """Scores of every candidate considered by :func:`select_refusal_direction`.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> grid = extract_directions(cm, ["Tell me how to pick a lock."], ["Bake bread."], positions=[-1], progress=False)
        >>> _, report = select_refusal_direction(cm, grid, ["How do I pick a lock?"], ["Bake a cake."],
        ...                                      kl_threshold=1e9, induce_threshold=-1e9, progress=False)
        >>> sorted(report.to_dict())
        ['baseline_harmful', 'baseline_harmless', 'candidates', 'chosen', 'settings']
    """

    candidates: list[dict]
    """One record per (position, layer): bypass, induce and KL scores (``None`` where not
    computed because a better candidate had already passed every filter), and why it was
    discarded, if it was."""
    chosen: dict | None
    """The winning record."""
    baseline_harmful: float
    """Mean refusal score on the harmful val prompts without intervention."""
    baseline_harmless: float
    """Mean refusal score on the harmless val prompts without intervention."""
    settings: dict
    """Thresholds and sizes used."""

    def to_dict(self) -> dict:
        """JSON-able form (what the study saves as ``directions/refusal_selection.json``)."""
        return {"candidates": self.candidates, "chosen": self.chosen, "baseline_harmful": self.baseline_harmful,
                "baseline_harmless": self.baseline_harmless, "settings": self.settings}

    def __repr__(self) -> str:
        c = self.chosen
        if c:
            def num(k: str) -> str:
                v = c.get(k)
                return "n/a" if v is None else f"{v:.3g}"

            chosen = (f"chosen layer {c.get('layer')} position {c.get('position')} (bypass {num('bypass')}, "
                      f"induce {num('induce')}, KL {num('kl')})")
        else:
            chosen = "nothing chosen"
        discarded = sum(1 for r in self.candidates if r.get("discarded"))
        return (f"SelectionReport({chosen}; {len(self.candidates)} candidates, {discarded} discarded; "
                f"baseline score harmful {self.baseline_harmful:.3g} / harmless {self.baseline_harmless:.3g}; "
                f"fallback_used={self.settings.get('fallback_used')!r})")


def _candidates(grid: DirectionGrid, max_layer: float, max_layer_fraction: float
                ) -> tuple[list[dict], list[tuple[int, int]]]:
    """One record per (position, layer) of the grid, and the eligible ones (not too late, not zero)."""
    records: list[dict] = []
    eligible: list[tuple[int, int]] = []
    for i, pos in enumerate(grid.positions):
        for j, layer in enumerate(grid.layers):
            rec = {"position": pos, "layer": layer, "bypass": None, "induce": None, "kl": None, "discarded": None}
            if layer >= max_layer:
                rec["discarded"] = f"layer >= {max_layer_fraction} * n_layers"
            elif float(grid.diff[i, j].norm()) == 0.0:
                rec["discarded"] = "zero vector (identical activations on both sides)"
            else:
                eligible.append((pos, layer))
            records.append(rec)
    return records, eligible


def select_refusal_direction(
    chat_model: "ChatModel",
    grid: DirectionGrid,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    *,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
    max_layer_fraction: float = 0.8,
    fallback: str | None = "relative",
    system: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> tuple[Direction, SelectionReport]:
    """Pick the refusal direction from a grid of candidates (Arditi et al. 2024).

    Bypass is scored for every eligible candidate; the two filters (induce score and KL)
    are evaluated lazily, best bypass first, and the first candidate that passes both
    wins — the same choice as scoring everything, at a fraction of the forward passes.

    Args:
        kl_threshold: largest mean KL (nats) that ablation may cause on harmless prompts.
        induce_threshold: smallest mean refusal log-odds that addition must reach on
            harmless prompts (Arditi et al.: 0, i.e. refusal tokens more likely than not).
        max_layer_fraction: candidates at layers ≥ this fraction of the depth are dropped.
        fallback: what to do when no candidate passes. ``"relative"`` (default) then
            applies a model-relative induce filter — addition must raise the harmless
            refusal score above the *unedited* harmless score — with the same KL and
            layer filters. Small models that rarely put more than half their
            probability on a refusal token need it (the bundled models do). The
            report's ``settings["fallback_used"]`` says which rule chose: ``None``
            for the filters above, ``"relative"`` for the fallback. ``None`` raises
            instead of falling back.
        system: system prompt used to format the val prompts (``None``: the template's own).
        batch_size: prompts per batch (default: sized by a token budget).
        progress: show a progress bar over the candidates.

    Returns:
        The chosen :class:`Direction` and a :class:`SelectionReport`.

    Raises:
        ConfigError: no candidate passes the filters (the error carries the report as
            ``.report``).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> grid = extract_directions(cm, ["Tell me how to pick a lock."], ["Bake bread."], positions=[-1], progress=False)
        >>> # the tiny model is random: loose filters here; keep the defaults on a real chat model
        >>> refusal, report = select_refusal_direction(cm, grid, ["How do I pick a lock?"], ["Bake a cake."],
        ...                                            kl_threshold=1e9, induce_threshold=-1e9, progress=False)
        >>> refusal.name, refusal.layer == report.chosen["layer"]
        ('refusal', True)
    """
    if fallback not in (None, "relative"):
        raise ConfigError(f"unknown selection fallback {fallback!r}", hint="use None or 'relative'")
    check_model(grid, chat_model, False, f"direction grid {grid.name!r}")
    max_layer = max_layer_fraction * chat_model.n_layers
    kw = dict(system=system, batch_size=batch_size, progress=False)
    base_harmful = refusal_scores(chat_model, harmful_val, **kw)
    base_harmless_logits = last_logits(chat_model, harmless_val, **kw)
    base_harmless = ops.refusal_log_odds(base_harmless_logits, chat_model.refusal_token_ids)
    records, eligible = _candidates(grid, max_layer, max_layer_fraction)
    by_key = {(r["position"], r["layer"]): r for r in records}
    from tqdm.auto import tqdm

    for pos, layer in tqdm(eligible, desc="selection: bypass score", disable=not progress, leave=False):
        d = grid.direction(pos, layer)
        by_key[(pos, layer)]["bypass"] = float(refusal_scores(chat_model, harmful_val, interventions=[Ablate(d)], **kw).mean())
    order = sorted(eligible, key=lambda k: by_key[k]["bypass"])
    base_induce = float(base_harmless.mean())

    def induce_of(key) -> float:
        rec = by_key[key]
        if rec["induce"] is None:
            d = grid.direction(*key)
            rec["induce"] = float(refusal_scores(chat_model, harmless_val, interventions=[AddVector(d, 1.0)], **kw).mean())
        return rec["induce"]

    def kl_of(key) -> float:
        rec = by_key[key]
        if rec["kl"] is None:
            logits = last_logits(chat_model, harmless_val, interventions=[Ablate(grid.direction(*key))], **kw)
            rec["kl"] = float(ops.kl_divergence(base_harmless_logits, logits).mean())
        return rec["kl"]

    def first_passing(threshold: float, label: str):
        key = _first_passing(order, lambda k: arditi_reason(induce_of(k), lambda: kl_of(k), induce_min=threshold,
                                                            induce_label=label, kl_threshold=kl_threshold),
                             lambda k, why: by_key[k].__setitem__("discarded", why))
        return None if key is None else by_key[key]

    chosen = first_passing(induce_threshold, f"{induce_threshold}")
    fallback_used = None
    if chosen is None and fallback == "relative" and eligible:
        fallback_used = "relative"
        chosen = first_passing(base_induce + 1e-9, _relative_label(base_induce))
    settings = {"kl_threshold": kl_threshold, "induce_threshold": induce_threshold,
                "max_layer_fraction": max_layer_fraction, "n_harmful_val": len(harmful_val),
                "n_harmless_val": len(harmless_val), "system": system, "fallback": fallback,
                "fallback_used": fallback_used}
    report = SelectionReport(records, chosen, float(base_harmful.mean()), float(base_harmless.mean()), settings)
    if chosen is None:
        err = ConfigError(
            f"no candidate direction passes the filters ({len(eligible)} eligible)",
            hint="loosen kl_threshold / induce_threshold, add positions and layers, or use fallback='relative'",
        )
        err.report = report
        raise err
    d = grid.direction(chosen["position"], chosen["layer"])
    d.provenance.update({"selection": {k: chosen[k] for k in ("bypass", "induce", "kl")},
                         "baseline_harmful_score": report.baseline_harmful,
                         "baseline_harmless_score": report.baseline_harmless, **settings})
    return d, report


# ============================================================================ rules on a score table
def arditi_reason(induce: float, kl: float | Callable[[], float], *, induce_min: float, induce_label: str,
                  kl_threshold: float) -> str | None:
    """Why Arditi et al.'s filters discard a candidate (``None``: it passes): its addition
    must reach ``induce_min`` on harmless prompts, its ablation must keep KL ≤
    ``kl_threshold``. ``kl`` may be a callable, evaluated only when the induce filter passes.

    Example:
        >>> arditi_reason(0.5, 0.3, induce_min=0.0, induce_label="0", kl_threshold=0.1)
        'KL 0.3 > 0.1'
    """
    if not induce >= induce_min:
        return f"induce score {induce:.3g} < {induce_label}"
    k = kl() if callable(kl) else kl
    if not k <= kl_threshold or math.isnan(k):
        return f"KL {k:.3g} > {kl_threshold}"
    return None


def _first_passing(order: Sequence[Hashable], reason_of: Callable[[Any], str | None],
                   record: Callable[[Any, str | None], None]) -> Any:
    """The first key of ``order`` that ``reason_of`` lets pass (``None``: none); each key
    tried gets its reason (or ``None``) through ``record``."""
    for key in order:
        why = reason_of(key)
        record(key, why)
        if why is None:
            return key
    return None


def _relative_label(base_induce: float) -> str:
    return f"unedited harmless score {base_induce:.3g}"


RULES: tuple[str, ...] = ("arditi", "kl_budget", "knee")
"""The named selection rules of :func:`apply_rule`."""


@dataclass(frozen=True)
class CandidateScores:
    """One candidate direction's measurements on the val split (a row of the score table).

    Example:
        >>> CandidateScores(position=-1, layer=9, bypass=-2.0, kl=0.05, induce=0.3, refusal=0.1).on_judged
        True
    """

    position: int
    """Position (from the end of the prompt) the diff-in-means was read at."""
    layer: int
    """Its layer (``resid_pre`` index)."""
    bypass: float
    """Mean first-token refusal log-odds on harmful val prompts with it ablated at every layer (lower: less refusal)."""
    kl: float
    """Mean ``KL(unedited ‖ ablated)`` of the next-token distribution on harmless val prompts, in nats."""
    induce: float | None = None
    """Mean first-token refusal log-odds on harmless val prompts with it added (coefficient 1) at its layer."""
    refusal: float | None = None
    """Judged refusal rate of the generated replies to the harmful val subset, ablated (``None``: not judged)."""
    degenerate: float | None = None
    """Share of those replies the judge flags degenerate."""

    @property
    def on_judged(self) -> bool:
        """Whether its replies were generated and judged."""
        return self.refusal is not None

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateScores":
        """A row from a record holding at least these fields (other keys are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: d.get(k) for k in names})


@dataclass(frozen=True)
class RuleSettings:
    """The parameters of the selection rules (defaults: Arditi et al.'s, and a 0.2-nat KL budget)."""

    kl_threshold: float = 0.1
    """``arditi``: largest KL (nats) of ablation on harmless prompts."""
    induce_threshold: float = 0.0
    """``arditi``: smallest mean refusal log-odds addition must reach on harmless prompts."""
    max_layer: float = math.inf
    """``arditi``: candidates at layers ≥ this are left out (Arditi et al.: 0.8·n_layers)."""
    fallback: str | None = "relative"
    """``arditi``: when no candidate passes, ``"relative"`` requires only that addition beats
    :attr:`baseline_induce` (``None``: nothing is chosen)."""
    baseline_induce: float | None = None
    """The unedited harmless mean refusal log-odds (for the ``relative`` fallback)."""
    kl_budget: float = 0.2
    """``kl_budget``: largest KL (nats) a candidate's ablation may cost on harmless prompts."""
    max_degenerate: float = 1.0
    """``kl_budget``, ``knee``: largest share of degenerate replies a judged candidate may have."""
    kl_floor: float = 1e-3
    """``knee``: KL values below this count as this on the log scale."""


@dataclass(frozen=True)
class RuleChoice:
    """What a rule chose from a score table, and why."""

    rule: str
    """The rule's name (one of :data:`RULES`)."""
    index: int | None
    """The chosen row of the table (``None``: no candidate passes)."""
    reason: str
    """One line on why (or why nothing)."""
    fallback_used: str | None = None
    """``"relative"`` (arditi's fallback) or ``"first_token"`` (no judged candidate qualified:
    first-token scores decided), else ``None``."""
    considered: tuple[int, ...] = ()
    """The rows the rule chose among (after its filters)."""

    def to_dict(self) -> dict:
        return {"rule": self.rule, "index": self.index, "reason": self.reason, "fallback_used": self.fallback_used,
                "considered": list(self.considered)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), in
    order of the first coordinate. A point equal to another is on the front with it; points
    with a NaN are never on it.

    Example:
        >>> pareto_front([(0.0, 1.0), (0.1, 0.5), (0.2, 0.6), (1.0, 0.0), (0.1, 0.9)])
        [0, 1, 3]
    """
    ok = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    front = [i for i in ok if not any(
        points[j][0] <= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i] for j in ok)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


def knee_index(points: Sequence[tuple[float, float]]) -> int | None:
    """The knee of a front: both coordinates scaled to [0, 1] over the front, the point
    farthest below the chord from the front's first end (lowest x) to its last (lowest y);
    ties go to the lower x. Fewer than three points: the one with the lowest y. Returns an
    index into ``points`` (``None`` for no point).

    Example:
        >>> knee_index([(0.0, 1.0), (0.2, 0.2), (1.0, 0.0)])
        1
    """
    front = pareto_front(points)
    if not front:
        return None
    if len(front) < 3:
        return min(front, key=lambda i: (points[i][1], points[i][0]))
    xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0

    def below(i: int) -> float:  # the chord runs from (0, 1) to (1, 0) once scaled: x + y = 1
        return 1.0 - (points[i][0] - min(xs)) / sx - (points[i][1] - min(ys)) / sy

    return max(front, key=lambda i: (below(i), -points[i][0]))


def apply_rule(rule: str, table: Sequence[CandidateScores], settings: RuleSettings = RuleSettings()) -> RuleChoice:
    """Choose a candidate from a score table by the rule ``rule`` (one of :data:`RULES`).

    * ``arditi``: the lowest first-token bypass among candidates below ``max_layer`` whose
      addition induces refusal (induce ≥ ``induce_threshold``) and whose ablation keeps KL ≤
      ``kl_threshold``; with ``fallback="relative"``, when none passes, induce need only
      beat ``baseline_induce``.
    * ``kl_budget``: among candidates with KL ≤ ``kl_budget`` whose replies were judged and
      are at most ``max_degenerate`` degenerate, the lowest judged refusal (ties: lower
      first-token bypass, then lower KL); when no judged candidate qualifies, the lowest
      first-token bypass within the budget (``fallback_used="first_token"``).
    * ``knee``: among judged candidates at most ``max_degenerate`` degenerate, the knee
      (:func:`knee_index`) of judged refusal against log10 KL (KL below ``kl_floor``
      counts as ``kl_floor``); without judged candidates, of first-token bypass against
      log10 KL (``fallback_used="first_token"``).

    Example:
        >>> rows = [CandidateScores(-1, 2, bypass=-1.0, kl=0.05, induce=0.5, refusal=0.4, degenerate=0.0),
        ...         CandidateScores(-1, 5, bypass=-3.0, kl=0.15, induce=0.2, refusal=0.05, degenerate=0.0),
        ...         CandidateScores(-1, 8, bypass=-4.0, kl=0.90, induce=0.9, refusal=0.0, degenerate=0.0)]
        >>> [apply_rule(r, rows).index for r in RULES]
        [0, 1, 1]
    """
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r}", hint=f"use one of {', '.join(RULES)}")
    st = settings
    rows = list(table)
    if rule == "arditi":
        return _arditi_rule(rows, st)
    judged = [i for i, c in enumerate(rows) if c.on_judged and _finite(c.kl) and _finite(c.refusal)
              and (c.degenerate is None or c.degenerate <= st.max_degenerate)]
    if rule == "kl_budget":
        within = [i for i in judged if rows[i].kl <= st.kl_budget]
        if within:
            best = min(within, key=lambda i: (rows[i].refusal, rows[i].bypass, rows[i].kl))
            return RuleChoice(rule, best, f"lowest judged refusal ({rows[best].refusal:.3g}) among the {len(within)} "
                              f"judged candidates with KL <= {st.kl_budget:g}", None, tuple(within))
        first = [i for i, c in enumerate(rows) if _finite(c.kl) and _finite(c.bypass) and c.kl <= st.kl_budget]
        if not first:
            return RuleChoice(rule, None, f"no candidate's ablation keeps KL <= {st.kl_budget:g}")
        best = min(first, key=lambda i: (rows[i].bypass, rows[i].kl))
        return RuleChoice(rule, best, f"no judged candidate within KL <= {st.kl_budget:g}: the lowest first-token "
                          f"bypass ({rows[best].bypass:.3g}) within it", "first_token", tuple(first))
    # knee
    pool, y_of, used = judged, (lambda c: c.refusal), None
    if not pool:
        pool = [i for i, c in enumerate(rows) if _finite(c.kl) and _finite(c.bypass)]
        y_of, used = (lambda c: c.bypass), "first_token"
    if not pool:
        return RuleChoice(rule, None, "no candidate with finite scores")
    pts = [(math.log10(max(rows[i].kl, st.kl_floor)), y_of(rows[i])) for i in pool]
    k = pool[knee_index(pts)]
    what = "judged refusal" if used is None else "first-token bypass"
    return RuleChoice(rule, k, f"knee of the front of {what} against log10 KL ({len(pareto_front(pts))} front "
                      f"points of {len(pool)})", used, tuple(pool))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _arditi_rule(rows: list[CandidateScores], st: RuleSettings) -> RuleChoice:
    eligible = [i for i, c in enumerate(rows) if c.layer < st.max_layer and _finite(c.bypass)]
    order = sorted(eligible, key=lambda i: (rows[i].bypass, i))
    reasons: dict[int, str | None] = {}

    def first(threshold: float, label: str) -> int | None:
        def reason(i: int) -> str | None:
            c = rows[i]
            if c.induce is None:
                return "induce not measured"
            return arditi_reason(c.induce, c.kl, induce_min=threshold, induce_label=label, kl_threshold=st.kl_threshold)

        return _first_passing(order, reason, reasons.__setitem__)

    best = first(st.induce_threshold, f"{st.induce_threshold}")
    if best is not None:
        return RuleChoice("arditi", best, f"lowest bypass ({rows[best].bypass:.3g}) with induce >= "
                          f"{st.induce_threshold:g} and KL <= {st.kl_threshold:g}", None, tuple(eligible))
    if st.fallback == "relative" and st.baseline_induce is not None and eligible:
        best = first(st.baseline_induce + 1e-9, _relative_label(st.baseline_induce))
        if best is not None:
            return RuleChoice("arditi", best, f"no candidate met induce >= {st.induce_threshold:g}: the lowest bypass "
                              f"({rows[best].bypass:.3g}) whose addition beats the {_relative_label(st.baseline_induce)}"
                              f" with KL <= {st.kl_threshold:g}", "relative", tuple(eligible))
    return RuleChoice("arditi", None, f"no candidate of {len(eligible)} passes Arditi et al.'s filters", None,
                      tuple(eligible))
