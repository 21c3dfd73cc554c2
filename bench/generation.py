"""Benchmarks of what a new user feels: first-load memory, decoding speed, early stopping.

Run ``python bench/generation.py`` (demo model, about 8 minutes on 2 CPU cores;
``--model tiny`` checks the script in seconds). Nothing here is a test: no timing or
memory assertions exist in the test suite. Rows:

L1. peak resident memory (kernel ``VmHWM``) of the first load — an empty cache folder, so
    the GGUF is assembled, dequantised and converted — in a fresh subprocess, / the
    float32 weights of the loaded ``HookedTransformer``                     target ≤ 2.5
L2. the same for the cached load (converted weights read from the cache)  target ≤ 2.5
L3. resident memory once loaded / the float32 weights                     report
G1. greedy decoding steps, tokens/s at R rows (``--rows``, default 32 and 64), for each
    decoding mode (``--decode``, default packed, plain, reference): the seconds of a
    generation of N + 1 tokens minus those of a 1-token one (the prompt's forward pass),
    so only the N decoding steps count. Next to two bounds: the *peak bound* (every
    decoding step's matrix products at the best square-product rate of this machine, MKL
    or oneDNN, whichever is faster) and the *shape bound* (the same products, each timed
    alone at its shape with the faster library). Ratios of the rate to each bound;
    target ≥ 0.6 of the peak bound, reported also against the shape bound.
G2. package decoding tokens/s / transformers ``generate`` on the same weights  ≥ 0.8
E1. judged replies (``--judge-tokens``, default 128) of harmful and harmless val prompts
    with early stopping (``stop_when=decided_by(strict, lenient)``) / without: seconds,
    decoded tokens, and whether every label of both judges is the same (it must be).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _peak_rss_kb, _status_kb, generation_pair, hf_model_for, interleaved, matmul_peak  # noqa: E402


def load_probe(model: str, dtype: str = "float32") -> None:
    """Subprocess body: load once, print peak and current RSS and the weights' size."""
    import persona_refusal as pr

    t = time.perf_counter()
    cm = pr.load_chat_model(model, progress=False, dtype=dtype)
    seconds = time.perf_counter() - t
    weights = sum(p.numel() * 4 for p in cm.model.parameters())  # float32 size, whatever the dtype
    print(json.dumps({"peak_mb": _peak_rss_kb() / 1024, "rss_mb": _status_kb("VmRSS") / 1024,
                      "weights_mb": weights / 2**20, "seconds": seconds}))


def probe(model: str, cache: str, dtype: str = "float32") -> dict:
    env = {**os.environ, "PERSONA_REFUSAL_CACHE": cache}
    out = subprocess.run([sys.executable, __file__, "--load-probe", "--model", model, "--dtype", dtype], env=env,
                         check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_products(cm, rows: int, kv_len: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one decoding step of ``rows`` rows."""
    cfg = cm.model.cfg
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    kv = (cfg.n_key_value_heads or h) * dh
    per_layer = [(rows, d, h * dh), (rows, d, kv), (rows, d, kv), (rows, h * dh, d)]
    per_layer += [(rows, d, cfg.d_mlp)] * (2 if cfg.gated_mlp else 1) + [(rows, cfg.d_mlp, d)]
    # attention scores and values: per row and head, one query against kv_len keys (m = rows × heads)
    per_layer += [(rows * h, dh, kv_len), (rows * h, kv_len, dh)]
    return per_layer * cfg.n_layers + [(rows, d, cfg.d_vocab)]


def _dnn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def best_linear(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Best seconds of ``a @ b.T`` with torch's ``F.linear`` (MKL on a CPU) or oneDNN's
    linear, whichever is faster here."""
    ops = [torch.nn.functional.linear]
    try:
        _dnn(a[:2], b[:2])
        ops.append(_dnn)
    except Exception:  # noqa: BLE001 - no oneDNN for this dtype / build
        pass
    best = float("inf")
    for op in ops:
        op(a, b)
        for _ in range(repeats):
            t = time.perf_counter()
            op(a, b)
            best = min(best, time.perf_counter() - t)
    return best


def peak_gflops(repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a product the size of an MLP projection on 2048 rows, with the
    faster of MKL and oneDNN (bench/run.py's ``matmul_peak`` times ``F.linear`` alone)."""
    a, b = torch.randn(2048, 896, dtype=dtype), torch.randn(4864, 896, dtype=dtype)
    return max(matmul_peak(repeats, dtype), 2 * 2048 * 896 * 4864 / best_linear(a, b, repeats + 2) / 1e9)


def shape_bound_seconds(products, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Seconds for one decoding step's products, each timed alone (best of ``repeats``,
    the faster library)."""
    total = 0.0
    for m, k, n in sorted(set(products)):
        count = products.count((m, k, n))
        if m > products[-1][0]:  # attention: one query row per (row, head), its own keys
            a, b = torch.randn(m, 1, k, dtype=dtype), torch.randn(m, k, n, dtype=dtype)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                torch.bmm(a, b)
                best = min(best, time.perf_counter() - t)
        else:
            best = best_linear(torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), repeats)
        total += best * count
    return total


def decoding_fns(cm, prompts, new_tokens: int, modes) -> dict:
    """``{"MODE:steps": fn, "MODE:prefill": fn}``: one batch of ``prompts`` generating
    ``new_tokens + 1`` tokens, and the same generating 1 (the prompt's pass alone)."""
    import persona_refusal as pr

    def make(mode, n):
        def fn():
            cm.decode = mode
            pr.generate(cm, prompts, max_new_tokens=n, batch_size=len(prompts), progress=False)
        return fn

    fns = {}
    for mode in modes:
        fns[f"{mode}:steps"] = make(mode, new_tokens + 1)
        fns[f"{mode}:prefill"] = make(mode, 1)
    return fns


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rows", default="32,64", help="rows of the decoding benchmark, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--judge-tokens", type=int, default=128)
    ap.add_argument("--judge-prompts", type=int, default=32, help="harmful and as many harmless val prompts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: load, gen, early")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="the model's dtype; the matmul bounds are measured in the same dtype")
    ap.add_argument("--decode", default="packed,plain,reference",
                    help="decoding modes to time, comma-separated (the first is the one G2 and E1 use)")
    ap.add_argument("--load-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load_probe:
        load_probe(args.model, args.dtype)
        return 0
    skip = set(filter(None, args.skip.split(",")))

    import persona_refusal as pr
    from persona_refusal.evaluation import JUDGES, decided_by

    rows: list[dict] = []

    def row(name, value, target, note=""):
        rows.append({"benchmark": name, "value": value, "target": target, "note": note})
        print(f"{name:<62} {value:>8.3f}   target {target:<8} {note}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus", flush=True)
    if "load" not in skip:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
            first = probe(args.model, cache, args.dtype)
            cached = probe(args.model, cache, args.dtype)
        w = first["weights_mb"]
        row("L1. first load, peak RSS / float32 weights", first["peak_mb"] / w, "<= 2.5",
            f"{first['peak_mb']:.0f} MB peak, weights {w:.0f} MB, {first['seconds']:.0f} s (empty cache folder)")
        row("L2. cached load, peak RSS / float32 weights", cached["peak_mb"] / w, "<= 2.5",
            f"{cached['peak_mb']:.0f} MB peak, {cached['seconds']:.1f} s")
        row("L3. resident after the cached load / float32 weights", cached["rss_mb"] / w, "report",
            f"{cached['rss_mb']:.0f} MB")

    dtype = getattr(torch, args.dtype)
    cm = pr.load_chat_model(args.model, progress=False, dtype=args.dtype, decode=args.decode.split(",")[0])
    print(cm, args.dtype, flush=True)
    prompts = list(pr.bundled("harmless", "test")) + list(pr.bundled("harmless", "val"))
    if "gen" not in skip:
        peak = peak_gflops(args.repeats, dtype)
        print(f"peak {peak:.0f} GFLOP/s ({args.dtype}, the faster of MKL and oneDNN)", flush=True)
        hf = hf_model_for(cm, dtype)
        saved_stop, saved_mode = cm.stop_token_ids, cm.decode
        cm.stop_token_ids = ()  # equal work: every row decodes every token
        modes = [m for m in args.decode.split(",") if m]
        for r in [int(x) for x in args.rows.split(",")]:
            batch = (prompts * (r // len(prompts) + 1))[:r]
            n_tok = r * args.new_tokens
            prompt_len = int(cm.tokenize(cm.format(batch))[1].sum(-1).float().mean())
            products = step_products(cm, r, prompt_len + args.new_tokens // 2)
            flops = sum(2 * m * k * n for m, k, n in products)
            peak_rate = r / (flops / (peak * 1e9))
            shape_rate = r / shape_bound_seconds(products, dtype=dtype)
            t = interleaved(decoding_fns(cm, batch, args.new_tokens, modes), args.repeats)
            for mode in modes:
                rate = n_tok / max(t[f"{mode}:steps"] - t[f"{mode}:prefill"], 1e-9)
                row(f"G1. decoding steps at {r} rows ({mode}), tokens/s / peak bound", rate / peak_rate, ">= 0.6",
                    f"{rate:.1f} tok/s; peak bound {peak_rate:.0f} tok/s ({peak:.0f} GFLOP/s, {args.dtype})")
                row(f"G1. decoding steps at {r} rows ({mode}), tokens/s / shape bound", rate / shape_rate, "report",
                    f"shape bound {shape_rate:.0f} tok/s (each product timed alone at its shape)")
            if "reference" in modes and modes[0] != "reference":
                row(f"G1. decoding steps at {r} rows, {modes[0]} / reference", (t["reference:steps"] - t["reference:prefill"])
                    / max(t[f"{modes[0]}:steps"] - t[f"{modes[0]}:prefill"], 1e-9), "report", "speed-up of the steps")
            cm.decode = modes[0]
            fns = generation_pair(cm, hf, batch, args.new_tokens)
            if "hf" in fns:
                g = interleaved(fns, args.repeats)
                row(f"G2. generation at {r} rows ({modes[0]}) / transformers generate", g["hf"] / g["package"], ">= 0.8",
                    f"package {n_tok / g['package']:.1f} tok/s, hf {n_tok / g['hf']:.1f} tok/s (prompt pass included)")
        cm.stop_token_ids, cm.decode = saved_stop, saved_mode
        del hf

    if "early" not in skip:
        n = args.judge_prompts
        val = list(pr.bundled("harmful", "val"))[:n] + list(pr.bundled("harmless", "val"))[:n]
        judges = [JUDGES["strict"], JUDGES["lenient"]]
        results = {}
        for name, stop in (("full", None), ("early", decided_by(*judges))):
            t = time.perf_counter()
            texts = pr.generate(cm, val, max_new_tokens=args.judge_tokens, stop_when=stop, progress=False)
            seconds = time.perf_counter() - t
            tokens = sum(len(cm.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)
            labels = [j(val, texts) for j in judges]
            results[name] = (seconds, tokens, labels)
        (s_full, t_full, l_full), (s_early, t_early, l_early) = results["full"], results["early"]
        same = l_full == l_early
        row(f"E1. judged replies ({args.judge_tokens} tokens), early stop / full: seconds", s_early / s_full,
            "report", f"{s_early:.0f} s vs {s_full:.0f} s, {len(val)} val prompts (half harmful)")
        row("E1. the same: decoded tokens, early stop / full", t_early / max(t_full, 1), "report",
            f"{t_early} vs {t_full} tokens; labels of both judges {'identical' if same else 'DIFFER'}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
