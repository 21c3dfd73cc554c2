"""The studies' statistics: rates with Wilson intervals, means, restoration, paired differences.

Context
-------
Every rate a study reports carries a Wilson 95% interval (prompts are Bernoulli trials);
a mean log-odds carries a normal 95% interval; a mean KL divergence (skewed, bounded
below by 0) a percentile bootstrap interval over prompts. *Restoration* asks how much of
the gap between the baseline and the persona condition a re-added refusal direction
closes: ``(mean(cond) − mean(persona)) / (mean(baseline) − mean(persona))``, with a paired
percentile bootstrap over prompts (all three conditions are measured on the same prompts).
Two edits measured on the same prompts are compared by :func:`paired_difference`: the
mean per-prompt difference with a paired percentile bootstrap interval.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from persona_refusal import ops
from persona_refusal.evaluation import Rate

__all__ = ["first_token_stats", "point_stats", "outcome_rates", "restoration", "mean_ci", "bootstrap_mean",
           "paired_difference", "Z95"]

Z95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal."""


def mean_ci(x: torch.Tensor) -> dict:
    """Mean with a normal 95% interval: ``{"mean", "ci", "n"}``.

    Example:
        >>> mean_ci(torch.tensor([1.0, 2.0, 3.0]))["mean"]
        2.0
    """
    n = x.shape[0]
    mean = float(x.mean())
    half = float(Z95 * x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(n)}


def first_token_stats(refused: Sequence[bool], scores: Sequence[float]) -> dict:
    """Rate of greedy first tokens that open a refusal, with Wilson CI, and the mean
    first-token refusal log-odds with a normal 95% interval.

    Example:
        >>> s = first_token_stats([True, False], [1.0, -1.0])
        >>> s["refusal_rate"], s["k"], s["score_mean"]
        (0.5, 1, 0.0)
    """
    n = len(refused)
    k = int(sum(bool(x) for x in refused))
    lo, hi = ops.wilson_interval(k, n)
    m = mean_ci(torch.tensor(list(scores), dtype=torch.float64))
    return {"refusal_rate": k / n, "k": k, "n": n, "ci": [lo, hi], "score_mean": m["mean"], "score_ci": m["ci"]}


def point_stats(point: dict, reference: tuple[dict, dict] | None = None, *, n_boot: int, seed: int) -> dict:
    """First-token statistics of one point (``{"refused", "scores"}`` per prompt,
    :func:`first_token_stats`) and, given the ``(baseline, persona)`` points of the same
    prompts, the share of the persona → baseline gap it closes, of the rate
    (``restoration``, ``restoration_ci``) and of the log-odds (``score_restoration``,
    ``score_restoration_ci``; :func:`restoration`).

    Example:
        >>> base, pers = {"refused": [1, 1], "scores": [2.0, 2.0]}, {"refused": [0, 0], "scores": [-2.0, -2.0]}
        >>> point_stats({"refused": [1, 0], "scores": [2.0, -2.0]}, (base, pers), n_boot=10, seed=0)["restoration"]
        0.5
    """
    out = first_token_stats(point["refused"], point["scores"])
    if reference is not None:
        b, p = reference
        out["restoration"], out["restoration_ci"] = restoration(point["refused"], b["refused"], p["refused"],
                                                                n_boot=n_boot, seed=seed)
        out["score_restoration"], out["score_restoration_ci"] = restoration(point["scores"], b["scores"], p["scores"],
                                                                            n_boot=n_boot, seed=seed)
    return out


def outcome_rates(labels: Sequence[str]) -> dict:
    """Refusal / compliance / degenerate rates with Wilson intervals.

    Example:
        >>> outcome_rates(["refusal", "compliance"])["refusal"]["k"]
        1
    """
    n = len(labels)
    return {lab: Rate(sum(l == lab for l in labels), n).to_dict() for lab in ("refusal", "compliance", "degenerate")}


def restoration(cond: Sequence[float | bool], base: Sequence[float | bool], persona: Sequence[float | bool], *,
                n_boot: int, seed: int) -> tuple[float | None, list[float | None]]:
    """``(mean(cond) − mean(persona)) / (mean(base) − mean(persona))`` with a paired
    percentile bootstrap 95% interval over prompts (``None`` when the baseline and
    persona means are equal).

    Example:
        >>> restoration([1, 0], [1, 1], [0, 0], n_boot=100, seed=0)[0]
        0.5
    """
    c, b, p = (torch.tensor([float(x) for x in v], dtype=torch.float64) for v in (cond, base, persona))
    denom = float(b.mean() - p.mean())
    point = None if abs(denom) < 1e-12 else float((c.mean() - p.mean()) / denom)
    idx = _resamples(len(c), n_boot, seed)
    num = c[idx].mean(1) - p[idx].mean(1)
    den = b[idx].mean(1) - p[idx].mean(1)
    ok = den.abs() > 1e-12
    if point is None or int(ok.sum()) < n_boot // 2:
        return point, [None, None]
    return point, _percentiles(num[ok] / den[ok])


def _resamples(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """``[n_boot, n]`` indices of prompts drawn with replacement (seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_boot, n), generator=g)


def _percentiles(values: torch.Tensor) -> list[float]:
    """The 2.5% and 97.5% percentiles of bootstrap statistics (the percentile interval)."""
    vals = values.sort().values
    return [float(vals[int(0.025 * (len(vals) - 1))]), float(vals[int(math.ceil(0.975 * (len(vals) - 1)))])]


def bootstrap_mean(values: Sequence[float], *, n_boot: int, seed: int) -> dict:
    """Mean with a percentile bootstrap 95% interval over prompts: ``{"mean", "ci", "n"}``
    (``ci`` is ``[None, None]`` for fewer than two values).

    Example:
        >>> r = bootstrap_mean([0.1, 0.2, 0.3, 0.4], n_boot=200, seed=0)
        >>> round(r["mean"], 6), r["ci"][0] <= r["mean"] <= r["ci"][1]
        (0.25, True)
    """
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if len(x) == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci": [None, None], "n": 1}
    return {"mean": mean, "ci": _percentiles(x[_resamples(len(x), n_boot, seed)].mean(1)), "n": int(len(x))}


def paired_difference(a: Sequence[float | bool], b: Sequence[float | bool], *, n_boot: int, seed: int) -> dict:
    """``mean(a) − mean(b)`` for two conditions measured on the same prompts, with a paired
    percentile bootstrap 95% interval (prompts resampled together): ``{"diff", "ci", "n"}``.
    Booleans (refused or not) give a difference of rates.

    Example:
        >>> d = paired_difference([True, True, False, True], [False, False, False, True], n_boot=500, seed=0)
        >>> d["diff"], d["n"]
        (0.5, 4)
    """
    x = torch.tensor([float(v) for v in a], dtype=torch.float64)
    y = torch.tensor([float(v) for v in b], dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in number: {len(x)} vs {len(y)}")
    d = x - y
    r = bootstrap_mean(d.tolist(), n_boot=n_boot, seed=seed)
    return {"diff": r["mean"], "ci": r["ci"], "n": r["n"]}
