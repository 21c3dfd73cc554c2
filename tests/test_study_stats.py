"""persona_refusal.study.stats: rates, means and restoration, on hand-made numbers."""

from __future__ import annotations

import math

import pytest
import torch

from persona_refusal.study.stats import first_token_stats, mean_ci, outcome_rates, restoration


def test_first_token_stats_counts_and_intervals():
    s = first_token_stats([True, False, True, True], [2.0, -1.0, 1.0, 0.0])
    assert (s["k"], s["n"], s["refusal_rate"]) == (3, 4, 0.75)
    assert s["ci"][0] < 0.75 < s["ci"][1]
    assert s["score_mean"] == pytest.approx(0.5)
    half = 1.959963984540054 * torch.tensor([2.0, -1.0, 1.0, 0.0], dtype=torch.float64).std().item() / 2
    assert s["score_ci"] == pytest.approx([0.5 - half, 0.5 + half])


def test_mean_ci_of_one_value_has_no_interval():
    m = mean_ci(torch.tensor([3.0]))
    assert m["mean"] == 3.0 and all(math.isnan(x) for x in m["ci"]) and m["n"] == 1


def test_outcome_rates_sum_to_one():
    r = outcome_rates(["refusal", "compliance", "compliance", "degenerate"])
    assert sum(v["k"] for v in r.values()) == 4 and r["compliance"]["rate"] == 0.5


def test_restoration_point_and_paired_interval():
    base, persona = [1.0] * 10, [0.0] * 10
    point, ci = restoration([1.0] * 5 + [0.0] * 5, base, persona, n_boot=500, seed=0)
    assert point == 0.5 and ci[0] <= 0.5 <= ci[1]
    full, _ = restoration(base, base, persona, n_boot=100, seed=0)
    none, _ = restoration(persona, base, persona, n_boot=100, seed=0)
    assert (full, none) == (1.0, 0.0)


def test_restoration_is_undefined_without_a_gap():
    point, ci = restoration([1.0, 0.0], [1.0, 1.0], [1.0, 1.0], n_boot=100, seed=0)
    assert point is None and ci == [None, None]


def test_restoration_bootstrap_is_seeded():
    args = ([True, False, True, False, True], [True, True, True, True, False], [False, False, True, False, False])
    assert restoration(*args, n_boot=300, seed=4) == restoration(*args, n_boot=300, seed=4)
