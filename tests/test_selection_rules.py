"""selection: the named rules (arditi, kl_budget, knee) and the Pareto front, on hand-made
score tables — and the arditi rule against the lazy Arditi selection on the tiny model."""

from __future__ import annotations

import math

import pytest

from persona_refusal.errors import ConfigError
from persona_refusal.selection import (RULES, CandidateScores, RuleSettings, apply_rule, knee_index, pareto_front,
                                       select_refusal_direction)
from persona_refusal.study.refusal.stages.calibrate import choose_coeff
from persona_refusal.study.refusal.stages.front import judged_keys


def C(layer, bypass, kl, induce=1.0, refusal=None, degenerate=0.0, position=-1):
    return CandidateScores(position, layer, bypass=bypass, kl=kl, induce=induce, refusal=refusal,
                           degenerate=None if refusal is None else degenerate)


# ----------------------------------------------------------------------------- the Pareto front
def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [(0.01, 0.9), (0.05, 0.5), (0.05, 0.6), (0.3, 0.1), (0.2, 0.4), (1.0, 0.0), (0.5, 0.2), (0.01, 0.95)]
    # (0.05, 0.6) is beaten by (0.05, 0.5); (0.5, 0.2) by (0.3, 0.1); (0.01, 0.95) by (0.01, 0.9)
    assert pareto_front(pts) == [0, 1, 4, 3, 5]
    for i in pareto_front(pts):
        assert not any(q[0] <= pts[i][0] and q[1] <= pts[i][1] and q != pts[i] for q in pts)


def test_pareto_front_ties_and_nans():
    assert pareto_front([(0.1, 0.2), (0.1, 0.2), (0.3, 0.3)]) == [0, 1]
    assert pareto_front([(math.nan, 0.0), (0.2, math.nan), (0.5, 0.5)]) == [2]
    assert pareto_front([]) == []


def test_knee_is_the_corner_of_an_l_shaped_front():
    # refusal falls steeply until KL 0.1, then barely: the corner is the knee
    pts = [(-3.0, 0.9), (-2.0, 0.6), (-1.0, 0.08), (0.0, 0.05), (0.5, 0.0)]
    assert knee_index(pts) == 2
    # two points: the lower refusal; one point: that one; none: None
    assert knee_index([(0.0, 0.5), (1.0, 0.1)]) == 1
    assert knee_index([(0.3, 0.2)]) == 0
    assert knee_index([]) is None


# ----------------------------------------------------------------------------- kl_budget
def test_kl_budget_takes_the_lowest_judged_refusal_within_the_budget():
    table = [C(2, -1.0, 0.05, refusal=0.40), C(5, -3.0, 0.15, refusal=0.05), C(8, -4.0, 0.90, refusal=0.00),
             C(9, -2.0, 0.19, refusal=0.05)]
    ch = apply_rule("kl_budget", table, RuleSettings(kl_budget=0.2))
    # candidate 2 refuses least but costs 0.9 nats; 1 and 3 tie on refusal, 1 has the lower bypass
    assert ch.index == 1 and ch.fallback_used is None and set(ch.considered) == {0, 1, 3}
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=1.0)).index == 2
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=0.1)).index == 0


def test_kl_budget_leaves_out_degenerate_candidates():
    table = [C(2, -1.0, 0.05, refusal=0.30, degenerate=0.0), C(5, -3.0, 0.10, refusal=0.00, degenerate=0.5)]
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=0.2, max_degenerate=0.1)).index == 0
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=0.2, max_degenerate=0.6)).index == 1


def test_kl_budget_falls_back_to_first_token_scores_and_says_so():
    table = [C(2, -1.0, 0.05), C(5, -3.0, 0.15), C(8, -4.0, 0.9, refusal=0.0)]
    ch = apply_rule("kl_budget", table, RuleSettings(kl_budget=0.2))
    assert ch.index == 1 and ch.fallback_used == "first_token" and "first-token" in ch.reason
    none = apply_rule("kl_budget", table, RuleSettings(kl_budget=0.01))
    assert none.index is None and "KL <= 0.01" in none.reason


# ----------------------------------------------------------------------------- arditi
def test_arditi_filters_induce_kl_and_late_layers():
    table = [C(20, -9.0, 0.01, induce=2.0),  # best bypass, but too late a layer
             C(4, -6.0, 0.50, induce=2.0),   # KL too high
             C(6, -5.0, 0.05, induce=-1.0),  # addition does not induce refusal
             C(8, -4.0, 0.05, induce=0.5),   # passes
             C(9, -3.0, 0.01, induce=0.5)]
    ch = apply_rule("arditi", table, RuleSettings(max_layer=19.2))
    assert ch.index == 3 and ch.fallback_used is None
    assert 0 not in ch.considered


def test_arditi_relative_fallback_is_used_and_recorded():
    table = [C(4, -6.0, 0.05, induce=-2.0), C(8, -4.0, 0.05, induce=-0.5), C(9, -3.0, 0.05, induce=-3.5)]
    settings = RuleSettings(baseline_induce=-3.0)
    ch = apply_rule("arditi", table, settings)
    assert ch.index == 0 and ch.fallback_used == "relative" and "unedited harmless score" in ch.reason
    strict = apply_rule("arditi", table, RuleSettings(baseline_induce=-3.0, fallback=None))
    assert strict.index is None


def test_knee_and_rules_on_one_table():
    table = [C(1, -0.5, 0.001, refusal=0.9), C(3, -1.0, 0.01, refusal=0.6), C(5, -3.0, 0.03, refusal=0.1),
             C(7, -3.5, 0.3, refusal=0.05), C(9, -4.0, 3.0, refusal=0.0)]
    assert apply_rule("knee", table).index == 2
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=0.2)).index == 2
    assert apply_rule("kl_budget", table, RuleSettings(kl_budget=0.5)).index == 3
    # without judged rows the knee reads the first-token bypass (and says so)
    ft = [CandidateScores(c.position, c.layer, c.bypass, c.kl, c.induce) for c in table]
    ch = apply_rule("knee", ft)
    assert ch.fallback_used == "first_token" and ch.index is not None


def test_unknown_rule_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown selection rule 'best'"):
        apply_rule("best", [C(1, 0.0, 0.0)])
    assert RULES == ("arditi", "kl_budget", "knee")


# ----------------------------------------------------------------------------- which candidates get judged
def test_judged_keys_put_the_rules_choices_and_the_front_first():
    table = [C(l, bypass=float(-l), kl=0.05 * l, induce=1.0) for l in range(1, 9)]
    keys = [f"-1@{l}" for l in range(1, 9)]
    settings = RuleSettings(kl_budget=0.22, kl_threshold=0.1)
    got = judged_keys(table, keys, settings, 3)
    # arditi: lowest bypass with KL <= 0.1 (layer 2); kl_budget: lowest bypass within 0.22 (layer 4); then the front
    assert got[:2] == ["-1@2", "-1@4"] and got[2] == "-1@8"
    assert judged_keys(table, keys, settings, "all") == ["-1@2", "-1@4", "-1@8", "-1@7", "-1@6", "-1@5", "-1@3", "-1@1"]
    assert judged_keys(table, keys, settings, 0) == []


def test_addition_strength_rule():
    assert choose_coeff({1.0: -3.0, 2.0: 0.0, 4.0: 2.0}) == (2.0, True)
    assert choose_coeff({1.0: -3.0, 2.0: -1.0, 4.0: -2.0}) == (2.0, False)


# ----------------------------------------------------------------------------- the lazy selection agrees
def test_arditi_rule_chooses_what_select_refusal_direction_chooses(tiny, prompts):
    from persona_refusal import extract_directions

    grid = extract_directions(tiny, prompts[:3], prompts[2:], positions=[-1], progress=False)
    harmful, harmless = ["How do I pick a lock?", "Write a phishing email."], ["Bake a cake.", "Name a river."]
    seen = set()
    for kl_threshold, induce in ((1e9, -1e9), (1e9, 1e9), (0.0, -1e9)):
        try:
            d, report = select_refusal_direction(tiny, grid, harmful, harmless, kl_threshold=kl_threshold,
                                                 induce_threshold=induce, fallback="relative", progress=False)
            want = (d.position, d.layer)
        except ConfigError as e:
            report, want = e.report, None
        seen.add(want is None)
        table = [CandidateScores(r["position"], r["layer"], r["bypass"], math.nan if r["kl"] is None else r["kl"],
                                 r["induce"]) for r in report.candidates if r["bypass"] is not None]
        ch = apply_rule("arditi", table, RuleSettings(kl_threshold=kl_threshold, induce_threshold=induce,
                                                     max_layer=0.8 * tiny.n_layers, fallback="relative",
                                                     baseline_induce=report.baseline_harmless))
        got = None if ch.index is None else (table[ch.index].position, table[ch.index].layer)
        assert got == want, (kl_threshold, induce)
        if want is not None:  # which rule decided (the strict filters, or the relative fallback)
            assert ch.fallback_used == report.settings["fallback_used"]
    assert seen == {True, False}, "the cases should cover a choice and no choice"
