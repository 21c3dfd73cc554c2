"""Typed results: every committed results.json loads with attribute access, serialises as it
was read, rebuilds its stages' dataclasses, and redraws the figures of its committed report.

The committed runs (``git ls-files '*results.json'``) are the contract: each must load,
and each figure its ``report.html`` holds must be drawn again, byte for byte, from the
loaded results and from the plain JSON dict alike.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
from pathlib import Path

import pytest

from persona_refusal.analysis.figures import FIGURES
from persona_refusal.analysis.report import figure_div
from persona_refusal.errors import ConfigError
from persona_refusal.results import GatingResults, Record, RecordList, RefusalResults, stage_keys, typed
from persona_refusal.study import load_results
from persona_refusal.study.registry import registered

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p for p in subprocess.run(["git", "ls-files", "*results.json"], cwd=REPO, capture_output=True,
                                              text=True, check=True).stdout.split())
"""Every committed results.json, relative to the repository."""


def _raw(path: str) -> dict:
    return json.loads((REPO / path).read_text())


def _study(raw: dict) -> str:
    return "refusal" if raw["schema"].startswith("persona_refusal.refusal/") else "gating"


def _same_by_attribute(typed_value, raw_value, where: str) -> None:
    """Every key that is a Python name reads the same by attribute as by item, at any depth."""
    if isinstance(raw_value, dict):
        assert isinstance(typed_value, Record), where
        for k, v in raw_value.items():
            if k.isidentifier() and not hasattr(dict, k):
                _same_by_attribute(getattr(typed_value, k), v, f"{where}.{k}")
            _same_by_attribute(typed_value[k], v, f"{where}[{k!r}]")
    elif isinstance(raw_value, list):
        assert isinstance(typed_value, list) and len(typed_value) == len(raw_value), where
        for i, (a, b) in enumerate(zip(typed_value, raw_value)):
            _same_by_attribute(a, b, f"{where}[{i}]")
    else:
        assert typed_value == raw_value and type(typed_value) is type(raw_value), where


def test_the_committed_runs_are_found():
    assert "figures/results.json" in COMMITTED and any(p.startswith("figures/refusal/") for p in COMMITTED)
    assert len(COMMITTED) >= 5


@pytest.mark.parametrize("path", COMMITTED)
def test_a_committed_results_json_loads_typed_and_serialises_as_read(path):
    raw = _raw(path)
    results = load_results(REPO / path)
    assert type(results) is (RefusalResults if _study(raw) == "refusal" else GatingResults)
    _same_by_attribute(results, raw, "results")
    assert json.dumps(results, sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert results == raw and dict(results) == raw
    assert copy.deepcopy(results) == raw and pickle.loads(pickle.dumps(results)) == raw
    assert results.summary().splitlines()[0].startswith(type(results).__name__)


@pytest.mark.parametrize("path", COMMITTED)
def test_every_stage_of_a_committed_run_rebuilds_its_dataclass(path):
    raw = _raw(path)
    results = load_results(REPO / path)
    rebuilt = 0
    for name, st in registered(_study(raw)).items():
        keys = st.result.json_fields()
        if all(k in raw for k in keys):
            res = results.stage(name)
            assert type(res) is st.result and res.to_json() == {k: raw[k] for k in keys}
            rebuilt += 1
        else:
            with pytest.raises(ConfigError, match="the stage did not run"):
                results.stage(name)
    assert rebuilt >= 5


def test_every_stage_declares_its_result_dataclass():
    for study in ("gating", "refusal"):
        for name, st in registered(study).items():
            assert st.result is not None and st.result.__name__.endswith("Result"), (study, name)


def test_attribute_access_reads_the_documented_values():
    results = load_results(REPO / "figures")
    assert results.refusal_direction.layer == results["refusal_direction"]["layer"]
    assert results.baseline.refusal.rate == results["baseline"]["refusal"]["rate"]
    g = results.gating[0]
    assert (g.beta, g.layer, g.refusal_rate) == (results["gating"][0]["beta"], results["gating"][0]["layer"],
                                                  results["gating"][0]["refusal_rate"])
    assert [c.cell for c in results.gating_confirm] == [c["cell"] for c in results["gating_confirm"]]
    assert results.stage("eval").persona.refusal.ci == results["persona"]["refusal"]["ci"]
    paper = load_results(REPO / "figures/demo/paper")
    assert paper.gating_judged.cells.paired == paper["gating_judged"]["cells"]["paired"]
    assert paper.calibration.rows == paper["calibration"]["rows"]  # a key named like no dict method
    refusal = load_results(REPO / "figures/refusal/demo")
    assert refusal.front.candidates[0].key == refusal["front"]["candidates"][0]["key"]
    assert refusal.examples["harmful/ablate"][0] == refusal["examples"]["harmful/ablate"][0]
    assert refusal.edits.kl.ablate.mean == refusal["edits"]["kl"]["ablate"]["mean"]


def test_a_stage_that_did_not_run_reads_as_none_and_a_typo_raises():
    results = load_results(REPO / "figures")  # the default protocol: no judged sweep, no calibration
    assert "gating_judged" not in results and results.gating_judged is None and results.sensitivity is None
    assert {"gating_judged", "calibration", "sensitivity"} <= stage_keys("gating")
    with pytest.raises(AttributeError, match="no key 'gatting' here"):
        results.gatting
    with pytest.raises(AttributeError, match=r"no key 'rat' here \(keys: ci, k, n, rate\)"):
        results.baseline.refusal.rat
    with pytest.raises(ConfigError, match="unknown stage"):
        results.stage("nope")
    refusal = load_results(REPO / "figures/refusal/demo")
    assert refusal.addition.coeff == refusal["addition"]["coeff"]
    with pytest.raises(AttributeError):
        refusal.gating  # a key of the other study


def test_records_stay_typed_when_assigned_and_plain_json_when_dumped():
    r = GatingResults({"model": {"model_id": "m"}})
    r["steering"] = {"s": 2.0, "layers": [{"at": 1}]}
    assert r.steering.s == 2.0 and r.steering.layers[0].at == 1
    assert json.loads(json.dumps(r)) == {"model": {"model_id": "m"}, "steering": {"s": 2.0, "layers": [{"at": 1}]}}
    assert typed([{"a": {"b": 1}}])[0].a.b == 1 and typed(3) == 3
    assert GatingResults.of(r) is r and isinstance(GatingResults.of({"x": 1}), GatingResults)
    with pytest.raises(AttributeError):
        r.steering.s = 3.0  # attributes are read-only: assign items


def _committed_figures() -> list[tuple[str, str]]:
    """``(results.json, figure)`` for every figure a committed report shows (the selection
    figure reads a file that the committed runs do not keep)."""
    out = []
    for path in COMMITTED:
        report = (REPO / path).parent / "report.html"
        text = report.read_text() if report.is_file() else ""
        out += [(path, name) for name, fig in FIGURES.items() if not fig.inputs and f'id="plot-{name}"' in text]
    return out


@pytest.mark.parametrize("path, name", _committed_figures())
def test_a_committed_report_figure_redraws_identically_from_the_typed_and_the_plain_results(path, name):
    report = ((REPO / path).parent / "report.html").read_text()
    draw = FIGURES[name].draw
    from_typed = figure_div(name, draw(load_results(REPO / path)))
    assert from_typed in report, f"{name} drawn from {path} differs from its committed report"
    assert figure_div(name, draw(_raw(path))) == from_typed


NOT_IN_A_COMMITTED_REPORT: set[str] = set()
"""Figures of stages no committed run measured (tests/test_paper_protocol.py draws every
figure from a paper run on the tiny model, typed and plain)."""


def test_every_other_figure_is_checked_against_a_committed_report():
    checked = {name for _, name in _committed_figures()}
    assert checked == {name for name, fig in FIGURES.items() if not fig.inputs} - NOT_IN_A_COMMITTED_REPORT


def test_what_is_added_to_loaded_results_is_typed_too():
    results = copy.deepcopy(load_results(REPO / "figures"))
    results["gating"].append(dict(results["gating"][0], beta=9.0))
    results["gating_control"] += [{"layer": 1, "beta": 9.0}]
    results["gating"][0] = {"layer": 0, "beta": 8.0}
    results["sweep"].update(extra={"n": 3})
    results.setdefault("notes", [{"a": 1}])
    assert results.gating[-1].beta == 9.0 and results.gating_control[-1].layer == 1 and results.gating[0].beta == 8.0
    assert results.sweep.extra.n == 3 and results.notes[0].a == 1
    assert isinstance(results.gating, RecordList) and json.loads(json.dumps(results))["gating"][-1]["beta"] == 9.0


def test_the_package_exports_the_persona_and_results_functions():
    import persona_refusal as pr
    from persona_refusal.persona import PersonaRollouts, persona_direction, persona_rollouts

    assert pr.persona_direction.__wrapped__ is persona_direction and pr.persona_rollouts.__wrapped__ is persona_rollouts
    assert pr.PersonaRollouts is PersonaRollouts and pr.load_results.__wrapped__ is load_results
    assert pr.GatingResults is GatingResults and pr.RefusalResults is RefusalResults
    for name in ("persona_direction", "persona_rollouts", "PersonaRollouts", "load_results", "GatingResults",
                 "RefusalResults"):
        assert name in pr.__all__ and name in dir(pr)
