"""The per-layer re-add sweep, written once: the ``gating`` stage and
:func:`persona_refusal.gating_experiment` both call :func:`readd_sweep`.

Context
-------
A re-add point is the persona steering (or nothing, for the control) plus the refusal
direction re-added at one layer with one strength: ``[*steer, readd(β, l)]``, keyed
``"β@l"``. How the points are measured is the caller's: :func:`readd_sweep` takes a
*runner*, a function from ``{key: interventions}`` to ``{key: {"refused", "scores"}}``
(per prompt, the first-token outcome). The study passes :meth:`StudyContext.sweep
<persona_refusal.study.gating.context.StudyContext.sweep>` (each point checkpointed, started
mid-model from a cached residual stream); the public function passes a plain loop over
:func:`~persona_refusal.evaluation.first_token_outcome`. The rows, and the restoration of
each (:func:`~persona_refusal.study.stats.point_stats`), are computed here for both.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from persona_refusal.evaluation import Rate
from persona_refusal.interventions import Intervention
from persona_refusal.study.stats import first_token_stats, point_stats, restoration

__all__ = ["Runner", "readd_key", "readd_points", "readd_sweep", "judged_points", "judged_rows", "judged_stats",
           "agreement"]

Runner = Callable[[Mapping[str, Sequence[Intervention]]], Mapping[str, dict]]
"""Measures points: ``{key: interventions}`` → ``{key: {"refused": [...], "scores": [...]}}``."""


def readd_key(beta: float, layer: int) -> str:
    """The key of the point that re-adds at ``layer`` with strength ``beta`` (``"2.0@18"``)."""
    return f"{beta}@{layer}"


def readd_points(steer: Sequence[Intervention], readd: Callable[[float, int], Intervention], betas: Sequence[float],
                 layers: Sequence[int]) -> dict[str, list[Intervention]]:
    """Every point of the sweep, β-major: ``{"β@l": [*steer, readd(β, l)]}``."""
    return {readd_key(b, l): [*steer, readd(b, l)] for b in betas for l in layers}


def readd_sweep(run: Runner, steer: Sequence[Intervention], readd: Callable[[float, int], Intervention],
                betas: Sequence[float], layers: Sequence[int], *, reference: tuple[dict, dict] | None,
                n_boot: int, seed: int) -> list[dict]:
    """The refusal direction re-added at every layer of ``layers``, at every strength of ``betas``.

    Args:
        run: measures the points (see :data:`Runner`).
        steer: the edits every point carries (the persona steering; ``()`` for the control).
        readd: ``(β, layer)`` → the re-add edit at that layer.
        reference: the ``(baseline, persona)`` points of the same prompts, for restoration
            (``None``: no restoration, as in the control).
        n_boot, seed: the paired bootstrap of restoration.

    Returns:
        one row per (β, layer), β-major: ``{"layer", "beta", "refusal_rate", "k", "n", "ci",
        "score_mean", "score_ci"}``, and with ``reference`` ``"restoration"``,
        ``"restoration_ci"``, ``"score_restoration"``, ``"score_restoration_ci"``.
    """
    outcomes = run(readd_points(steer, readd, betas, layers))
    return [{"layer": l, "beta": b, **point_stats(outcomes[readd_key(b, l)], reference, n_boot=n_boot, seed=seed)}
            for b in betas for l in layers]


# ---------------------------------------------------------------- judged from generated replies
def judged_points(steer: Sequence[Intervention], readd: Callable[[float, int], Intervention], *,
                  cells: Mapping[str, Sequence[int]], cell_betas: Sequence[float], control_betas: Sequence[float],
                  layers: Sequence[int], layer_betas: Sequence[float]) -> dict[str, list[Intervention]]:
    """Judged conditions by key, in this order: each cell (a set of layers re-added
    together) at every β of ``cell_betas`` (``"cell:NAME:β"``), each cell without ``steer``
    at every β of ``control_betas`` (``"control:NAME:β"``), and each layer of ``layers`` at
    every β of ``layer_betas`` (``"layer:β@l"``)."""
    out: dict[str, list[Intervention]] = {}
    for name, ls in cells.items():
        for b in cell_betas:
            out[f"cell:{name}:{b}"] = [*steer, *[readd(b, l) for l in ls]]
    for name, ls in cells.items():
        for b in control_betas:
            out[f"control:{name}:{b}"] = [readd(b, l) for l in ls]
    for b in layer_betas:
        for l in layers:
            out[f"layer:{readd_key(b, l)}"] = [*steer, readd(b, l)]
    return out


def _refused(g: dict, judge: str) -> list[bool]:
    return [l == "refusal" for l in g["labels_by_judge"][judge]]


def judged_stats(g: dict, base: dict | None, pers: dict | None, judges: Sequence[str], *, n_boot: int,
                 seed: int) -> dict:
    """Statistics of one judged condition: per judge, refusal and degenerate rates with
    Wilson intervals and (given ``base`` and ``pers``) restoration with a paired bootstrap
    interval; the first-token proxy, and the share of prompts where it agrees with each judge.

    Example:
        >>> g = {"labels_by_judge": {"strict": ["refusal", "compliance"]}, "refused": [True, True], "scores": [1.0, 2.0]}
        >>> s = judged_stats(g, None, None, ["strict"], n_boot=10, seed=0)
        >>> s["strict"]["refusal"]["k"], s["agreement"]["strict"]
        (1, 0.5)
    """
    n = len(g["refused"])
    out: dict = {"n": n}
    for name in judges:
        refused = _refused(g, name)
        labels = g["labels_by_judge"][name]
        row = {"refusal": Rate(sum(refused), n).to_dict(),
               "degenerate": Rate(sum(l == "degenerate" for l in labels), n).to_dict()}
        if base is not None and pers is not None:
            row["restoration"], row["restoration_ci"] = restoration(refused, _refused(base, name), _refused(pers, name),
                                                                    n_boot=n_boot, seed=seed)
        out[name] = row
    out["first_token"] = first_token_stats(g["refused"], g["scores"])
    out["agreement"] = {name: sum(a == b for a, b in zip(_refused(g, name), g["refused"])) / n if n else None
                        for name in judges}
    return out


def judged_rows(gens: Mapping[str, dict], cells: Mapping[str, Sequence[int]], base: dict, pers: dict,
                judges: Sequence[str], *, n_boot: int, seed: int) -> dict[str, list[dict]]:
    """The rows of judged conditions keyed as :func:`judged_points` keys them (each
    ``{"labels", "labels_by_judge", "refused", "scores", ...}``), with :func:`judged_stats`
    against the ``base`` and ``pers`` conditions of the same prompts: ``{"layers": one row
    per (β, layer), "cell_rows": one per (cell, β), "control": one per control cell}``."""
    kw = {"n_boot": n_boot, "seed": seed}
    out: dict[str, list[dict]] = {"layers": [], "cell_rows": [], "control": []}
    for key, g in gens.items():
        kind, _, rest = key.partition(":")
        if kind in ("cell", "control"):
            name, b = rest.rsplit(":", 1)
            ref = (base, pers) if kind == "cell" else (None, None)
            out["cell_rows" if kind == "cell" else "control"].append(
                {"cell": name, "layers": cells[name], "beta": float(b), **judged_stats(g, *ref, judges, **kw)})
        else:
            b, l = rest.split("@")
            out["layers"].append({"layer": int(l), "beta": float(b), **judged_stats(g, base, pers, judges, **kw)})
    return out


def agreement(gens: Iterable[dict], judge: str) -> dict:
    """How often the first-token proxy agrees with the headline judge over every reply of
    ``gens``: ``{"first_token_vs_judge", "n_replies", "judge"}``."""
    pairs = [(a == "refusal", r) for g in gens for a, r in zip(g["labels"], g["refused"])]
    return {"first_token_vs_judge": sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
            "n_replies": len(pairs), "judge": judge}
