"""The study's statistics: rates with Wilson intervals, means, and restoration.

Context
-------
Every rate the study reports carries a Wilson 95% interval (prompts are Bernoulli trials);
a mean log-odds carries a normal 95% interval. *Restoration* asks how much of the gap
between the baseline and the persona condition a re-added refusal direction closes:
``(mean(cond) − mean(persona)) / (mean(baseline) − mean(persona))``, with a paired
percentile bootstrap over prompts (all three conditions are measured on the same prompts).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from persona_refusal import ops
from persona_refusal.evaluation import Rate

__all__ = ["first_token_stats", "outcome_rates", "restoration", "mean_ci", "Z95"]

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
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(c), (n_boot, len(c)), generator=g)
    num = c[idx].mean(1) - p[idx].mean(1)
    den = b[idx].mean(1) - p[idx].mean(1)
    ok = den.abs() > 1e-12
    if point is None or int(ok.sum()) < n_boot // 2:
        return point, [None, None]
    vals = (num[ok] / den[ok]).sort().values
    lo = float(vals[int(0.025 * (len(vals) - 1))])
    hi = float(vals[int(math.ceil(0.975 * (len(vals) - 1)))])
    return point, [lo, hi]
