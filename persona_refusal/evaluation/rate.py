"""Rates with their Wilson 95% intervals: how every refusal rate of the package is reported."""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.checks import checked
from persona_refusal import ops

__all__ = ["Rate"]


@checked
@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with its Wilson 95% interval.

    Example:
        >>> r = Rate(3, 10)
        >>> r
        30.0% [10.8%, 60.3%] (3/10)
        >>> r.value, r.to_dict()["k"]
        (0.3, 3)
    """

    k: int
    """Count of positives."""
    n: int
    """Number of trials."""

    @property
    def value(self) -> float:
        """``k / n`` (NaN when ``n`` is 0)."""
        return self.k / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        """Wilson 95% interval."""
        return ops.wilson_interval(self.k, self.n)

    def to_dict(self) -> dict:
        """JSON-able form: ``k``, ``n``, ``rate`` and the Wilson ``ci``."""
        lo, hi = self.ci
        return {"k": self.k, "n": self.n, "rate": self.value, "ci": [lo, hi]}

    def __repr__(self) -> str:
        lo, hi = self.ci
        return f"{self.value:.1%} [{lo:.1%}, {hi:.1%}] ({self.k}/{self.n})"
