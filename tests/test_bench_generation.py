"""bench/generation.py runs end to end on the tiny model and reports every row it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generation_bench_runs_on_the_tiny_model(tmp_path):
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "generation.py"), "--model", "tiny", "--repeats", "1",
                    "--rows", "8", "--new-tokens", "4", "--judge-prompts", "3", "--judge-tokens", "12",
                    "--skip", "load", "--out", str(out)], check=True, capture_output=True, timeout=300)
    rows = {r["benchmark"]: r for r in json.loads(out.read_text())}
    names = " | ".join(rows)
    for key in ("G1. decoding steps at 8 rows (packed), tokens/s / peak bound",
                "G1. decoding steps at 8 rows (reference), tokens/s / shape bound",
                "G1. decoding steps at 8 rows, packed / reference",
                "E1. the same: decoded tokens, early stop / full"):
        assert key in rows, names
        assert math.isfinite(rows[key]["value"]) and rows[key]["value"] > 0
    # early stopping never changes a label (the guarantee the study relies on)
    assert "labels of both judges identical" in rows["E1. the same: decoded tokens, early stop / full"]["note"]
    assert rows["E1. the same: decoded tokens, early stop / full"]["value"] <= 1.0
