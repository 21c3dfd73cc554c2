"""How numbers of a study are written as text: rates in percent, intervals, ``n/a``.

Context
-------
A study's results hold rates as fractions with Wilson 95% intervals, in records such as
``{"k": 48, "n": 100, "rate": 0.48, "ci": [0.385, 0.577]}`` (judged replies) or
``{"refusal_rate": 0.5, "ci": [...], "k": 16, "n": 32, ...}`` (first-token sweeps). The
summary of :class:`persona_refusal.results.GatingResults`, the figures and the HTML report
of :mod:`persona_refusal.analysis` all write them the same way, with the helpers here. A
value that is missing, not a number or not finite is written ``n/a``; a bool is not a
number.

A leaf module: it imports nothing from the package (and neither torch nor plotly).

Example:
    >>> rate_text({"k": 48, "n": 100, "rate": 0.48, "ci": [0.385, 0.577]})
    '48.0% [38.5%, 57.7%] (48/100)'
    >>> pct(None), fmt(float("nan")), pp(-0.25)
    ('n/a', 'n/a', '-25.0 pp')
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NA", "finite", "percent", "pct", "percent_text", "fmt", "ci_text", "pp", "rate_parts", "rate_text"]

NA = "n/a"
"""How a missing or non-finite value is written."""


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite int or float (``bool`` and ``None`` are not).

    Example:
        >>> [finite(v) for v in (1, 0.5, True, None, float("inf"), "1")]
        [True, True, False, False, False, False]
    """
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def percent(x: Any) -> float | None:
    """A fraction as a number in percent (``0.48`` → ``48.0``), ``None`` when not finite."""
    return 100.0 * x if finite(x) else None


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as percent text: ``pct(0.4812)`` → ``'48.1%'``, ``n/a`` when not finite."""
    return f"{100 * x:.{digits}f}%" if finite(x) else NA


def percent_text(v: float | None) -> str:
    """A value already in percent as text: ``percent_text(48.12)`` → ``'48.1%'``; ``None`` → ``n/a``."""
    return NA if v is None else f"{v:.1f}%"


def fmt(v: Any, spec: str = ".3g") -> str:
    """``format(v, spec)`` for a finite number, else ``n/a``."""
    return format(v, spec) if finite(v) else NA


def ci_text(lo: Any, hi: Any, spec: str = ".2f") -> str:
    """An interval as ``[lo, hi]`` (``[n/a]`` when neither bound is finite).

    Example:
        >>> ci_text(0.1, 0.25), ci_text(None, 2.0), ci_text(None, None)
        ('[0.10, 0.25]', '[n/a, 2.00]', '[n/a]')
    """
    return f"[{fmt(lo, spec)}, {fmt(hi, spec)}]" if (finite(lo) or finite(hi)) else "[n/a]"


def pp(d: float) -> str:
    """A difference of two fractions in percentage points: ``pp(0.125)`` → ``'+12.5 pp'``."""
    return f"{100 * d:+.1f} pp"


def rate_parts(rec: dict | None) -> tuple:
    """``(rate, lo, hi, k, n)`` of a rate record, as fractions; all ``None`` for no record.

    The rate is ``refusal_rate`` (first-token records) or else ``rate`` (judged records);
    a missing interval gives ``None`` bounds.

    Example:
        >>> rate_parts({"refusal_rate": 0.5, "ci": [0.3, 0.7], "k": 4, "n": 8})
        (0.5, 0.3, 0.7, 4, 8)
        >>> rate_parts(None)
        (None, None, None, None, None)
    """
    if not rec:
        return None, None, None, None, None
    r = rec.get("refusal_rate", rec.get("rate"))
    ci = rec.get("ci") or [None, None]
    return r, ci[0], ci[1], rec.get("k"), rec.get("n")


def rate_text(rec: Any, fallback_rate: Any = None, fallback_ci: Any = None) -> str:
    """``48.0% [38.5%, 57.7%] (48/100)`` from a rate record, ``n/a`` without a finite rate.

    Args:
        rec: a rate record (``rate`` or ``refusal_rate``, ``ci``, optionally ``k`` and
            ``n``; the counts are shown when both keys are there).
        fallback_rate, fallback_ci: used when ``rec`` has no finite rate (older results
            files kept only the bare numbers).
    """
    r, lo, hi, _, _ = rate_parts(rec if isinstance(rec, dict) else None)
    if finite(r):
        counts = f" ({rec['k']}/{rec['n']})" if "k" in rec and "n" in rec else ""
        return f"{pct(r)} [{pct(lo)}, {pct(hi)}]{counts}"
    if finite(fallback_rate):
        ci = fallback_ci or [None, None]
        return f"{pct(fallback_rate)} [{pct(ci[0])}, {pct(ci[1])}]"
    return NA
