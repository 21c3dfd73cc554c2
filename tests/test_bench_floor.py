"""bench/floor.py counts the matrix products of a whole study by stage, exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import floor  # noqa: E402


def test_the_counter_counts_products_exactly():
    floor.self_check()  # F.linear, batched matmul and oneDNN's linear: exact counts, or it exits
    c = floor.ProductCounter()
    a, b = torch.randn(4, 6), torch.randn(6, 5)
    with c:
        a @ b
        torch.relu(a)  # not a product: not counted
        c.stage = "second"
        torch.einsum("ij,jk->ik", a, b)
    assert dict(c.flops) == {"(outside stages)": 2 * 4 * 6 * 5, "second": 2 * 4 * 6 * 5}


def test_floor_of_a_tiny_study(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), "--repeats", "1", "run", "--model",
                           "tiny", "--preset", "smoke", "--out", str(out), "--quiet", "--no-figures"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((out / "floor.json").read_text())
    stages = {r["stage"]: r for r in got["stages"]}
    info = json.loads((out / "results.json").read_text())["run_info"]["stage_seconds"]
    assert set(info) <= set(stages)  # every timed stage has a row
    for name in ("refusal_grid", "gating", "eval_generation"):  # stages that run the model do products
        assert stages[name]["tflop"] > 0, name
    assert abs(sum(r["tflop"] for r in got["stages"]) - got["total"]["tflop"]) < 1e-12
    assert got["total"]["floor_seconds"] == got["total"]["tflop"] * 1e3 / got["peak_gflops"]
    assert "floor" in proc.stdout and "of the peak" in proc.stdout
