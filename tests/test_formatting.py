"""formatting: how rates, intervals and missing values are written (summary, figures, report)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from persona_refusal import formatting
from persona_refusal.formatting import ci_text, finite, fmt, pct, percent, percent_text, pp, rate_parts, rate_text
from persona_refusal.results import GatingResults

JUDGED = {"k": 48, "n": 100, "rate": 0.48, "ci": [0.385, 0.577]}
FIRST_TOKEN = {"refusal_rate": 0.5, "ci": [0.3, 0.7], "k": 16, "n": 32, "score_mean": -1.2}


@pytest.mark.parametrize("value, expected", [
    (0, True), (1.5, True), (-2, True), (True, False), (False, False), (None, False), ("1", False),
    (math.nan, False), (math.inf, False), (-math.inf, False), ([1], False),
])
def test_finite(value, expected):
    assert finite(value) is expected


def test_percent_and_pct():
    assert percent(0.48) == pytest.approx(48.0) and percent(None) is None and percent(math.nan) is None
    assert pct(0.4812) == "48.1%" and pct(0.4812, 0) == "48%" and pct(1) == "100.0%"
    assert pct(None) == pct(math.nan) == pct(True) == "n/a"
    assert percent_text(48.12) == "48.1%" and percent_text(None) == "n/a"


def test_fmt_ci_text_and_pp():
    assert fmt(0.123456) == "0.123" and fmt(3, "g") == "3" and fmt(None) == fmt(math.inf) == "n/a"
    assert ci_text(0.1, 0.25) == "[0.10, 0.25]"
    assert ci_text(None, 2.0) == "[n/a, 2.00]" and ci_text(None, None) == "[n/a]"
    assert ci_text(0.123, 0.5, ".1f") == "[0.1, 0.5]"
    assert pp(0.125) == "+12.5 pp" and pp(-0.25) == "-25.0 pp" and pp(0.0) == "+0.0 pp"


def test_rate_parts():
    assert rate_parts(JUDGED) == (0.48, 0.385, 0.577, 48, 100)
    assert rate_parts(FIRST_TOKEN) == (0.5, 0.3, 0.7, 16, 32)
    assert rate_parts({"rate": 0.2}) == (0.2, None, None, None, None)
    assert rate_parts(None) == rate_parts({}) == (None,) * 5


def test_rate_text():
    assert rate_text(JUDGED) == "48.0% [38.5%, 57.7%] (48/100)"
    assert rate_text(FIRST_TOKEN) == "50.0% [30.0%, 70.0%] (16/32)"
    assert rate_text({"rate": 0.25, "ci": [0.1, 0.5]}) == "25.0% [10.0%, 50.0%]"  # no counts: none shown
    assert rate_text({"rate": 0.25}) == "25.0% [n/a, n/a]"
    # older results files kept only the bare numbers
    assert rate_text(None, 0.4, [0.3, 0.5]) == "40.0% [30.0%, 50.0%]"
    assert rate_text({"rate": None}, 0.4) == "40.0% [n/a, n/a]"
    assert rate_text(None) == rate_text({"rate": math.nan, "k": 0, "n": 0}) == rate_text("not a record") == "n/a"


def test_the_summary_uses_the_shared_helpers():
    r = GatingResults({"baseline": {"refusal": JUDGED}, "persona_refusal_rate": 0.0, "persona_refusal_ci": [0.0, 0.037],
                       "refusal_direction": {"layer": 9, "position": -1, "norm": 0.7512}})
    rows = dict(r.rows())
    assert rows["refusal, baseline"] == rate_text(JUDGED)
    assert rows["refusal, persona"] == "0.0% [0.0%, 3.7%]"
    assert rows["refusal direction"] == f"layer 9, position -1 (norm {fmt(0.7512)})"


def test_formatting_is_a_leaf_module():
    tree = ast.parse(Path(formatting.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "typing"}, imported
