"""Selecting the refusal direction among diff-in-means candidates (Arditi et al. 2024).

Context
-------
Every candidate of a :class:`~persona_refusal.directions.DirectionGrid` is scored by the
first-token refusal score (log-odds of the refusal tokens) on held-out **harmful** prompts
with the candidate **ablated** at every layer ("bypass": lower is better). Candidates whose
**addition** at their own layer does not induce refusal on held-out **harmless** prompts,
whose ablation moves the harmless next-token distribution by KL > 0.1, or whose layer lies
in the last 20% of the model are discarded; the lowest bypass among the rest wins.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from persona_refusal import ops
from persona_refusal.directions import Direction, DirectionGrid, check_model
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import last_logits, refusal_scores
from persona_refusal.interventions import Ablate, AddVector

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["SelectionReport", "select_refusal_direction"]

log = logging.getLogger(__name__)


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
    fallback: str | None = None,
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
        fallback: what to do when no candidate passes. ``None`` (default) raises.
            ``"relative"`` then applies a model-relative induce filter — addition must
            raise the harmless refusal score above the *unedited* harmless score —
            with the same KL and layer filters. Small models that rarely put more
            than half their probability on a refusal token need it; the report
            records ``fallback_used``.

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
        for key in order:
            rec = by_key[key]
            induce = induce_of(key)
            if not induce >= threshold:
                rec["discarded"] = f"induce score {induce:.3g} < {label}"
                continue
            kl = kl_of(key)
            if not kl <= kl_threshold or math.isnan(kl):
                rec["discarded"] = f"KL {kl:.3g} > {kl_threshold}"
                continue
            rec["discarded"] = None
            return rec
        return None

    chosen = first_passing(induce_threshold, f"{induce_threshold}")
    fallback_used = None
    if chosen is None and fallback == "relative" and eligible:
        fallback_used = "relative"
        chosen = first_passing(base_induce + 1e-9, f"unedited harmless score {base_induce:.3g}")
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
