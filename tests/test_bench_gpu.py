"""bench/gpu.py, the GPU benchmark, run tiny on the CPU: every row is printed and written,
every ratio is finite and positive, and the two models it compares hold the same weights.

No GPU is needed (nor used): ``--device cpu --layers 2 --scale 0.03`` builds a 2-block model
of Qwen2.5-7B's head layout with narrow widths in a few seconds. Timings are not checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
TINY = ["--device", "cpu", "--layers", "2", "--scale", "0.03", "--rows", "3", "--new-tokens", "4", "--repeats", "1"]
ROWS = ("0. same weights", "1. ablation", "2. generation tokens/s", "2b. generation under ablation",
        "3. peak GPU memory above the weights, GiB: forward_plain", "3. weights, GiB: HookedTransformer",
        "3. weights, GiB: transformers")


def _bench(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, str(BENCH), *TINY, *flags, "--out", str(out)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, json.loads(out.read_text())


def _value(data: dict, prefix: str):
    [row] = [r for r in data["results"] if r["benchmark"].startswith(prefix)]
    return row["value"]


@pytest.mark.parametrize("dtype, same_weights", [("float32", 1e-4), ("bfloat16", 0.25)])
def test_the_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path, dtype, same_weights):
    res, data = _bench(tmp_path, "--dtype", dtype)
    assert (data["device"], data["dtype"], data["gpu"]) == ("cpu", dtype, None)
    assert data["shape"]["n_layers"] == 2 and data["shape"]["n_heads"] == 28 and data["shape"]["n_kv_heads"] == 4
    assert data["shape"]["d_model"] == 28 * data["shape"]["d_head"]
    for prefix in ROWS:
        assert any(r["benchmark"].startswith(prefix) for r in data["results"]), prefix
        assert prefix in res.stdout
    for prefix in ("1. ablation", "2. generation tokens/s", "2b. generation under ablation"):
        ratio = _value(data, prefix)
        assert math.isfinite(ratio) and ratio > 0, (prefix, ratio)
    assert 0 <= _value(data, "0. same weights") < same_weights  # the conversion kept the weights
    # the transformers model holds exactly the shape's parameters, in the chosen dtype
    weights = _value(data, "3. weights, GiB: transformers") * 2**30
    assert weights == n_params(data["shape"]) * torch.finfo(getattr(torch, dtype)).bits // 8
    assert math.isclose(weights, _value(data, "3. weights, GiB: HookedTransformer") * 2**30, rel_tol=0.05)
    assert _value(data, "3. peak GPU memory above the weights, GiB: forward_plain") is None  # no GPU: n/a
    assert "elapsed" in res.stdout and data["elapsed_s"] > 0


def n_params(q: dict) -> int:
    """Qwen2's parameters: embedding and unembedding (untied), per block q/k/v/o (q/k/v with
    biases), the gated MLP and two norms, and the final norm."""
    d, kv = q["d_model"], q["n_kv_heads"] * q["d_head"]
    per_block = d * d + d + 2 * (d * kv + kv) + d * d + 3 * d * q["d_mlp"] + 2 * d
    return 2 * q["vocab"] * d + q["n_layers"] * per_block + d


def test_the_default_shape_is_qwen25_7b():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    q = bench.shape(None, 1.0)
    assert q == {"n_layers": 28, "d_model": 3584, "n_heads": 28, "n_kv_heads": 4, "d_head": 128, "d_mlp": 18944,
                 "vocab": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1e6}
    assert round(n_params(q) / 1e9, 2) == 7.62  # Qwen2.5-7B-Instruct's 7.62 billion parameters


def test_a_cuda_device_without_cuda_is_one_line(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda", "--layers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: device 'cuda' is not available"), err
    assert bench.main(["--device", "cpu", "--dtype", "float8"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dtype 'float8'")
