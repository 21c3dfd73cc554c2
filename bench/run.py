"""Benchmarks: what persona_refusal adds to the model's own cost, as ratios.

Run ``python bench/run.py`` (demo model; ``--model tiny`` for a quick check of the
script). Every figure is a ratio of two timings taken in the same process, interleaved
(A, B, A, B, …), median of ``--repeats`` runs, so machine load affects both sides alike.
Nothing here is a test: there are no timing assertions anywhere in the test suite.

Rows (targets from the benchmark issue):

1. forward under directional ablation at every layer and site / plain forward   ≤ 1.10
2. plain HookedTransformer forward / Hugging Face transformers forward           ≤ 1.3
3. activation caching for diff-in-means / plain forward over the same prompts    ≤ 1.15
   (and peak memory: grows with prompts × layers × positions × d_model, not with
   sequence length × layers — measured in subprocesses)
4. batched greedy generation tokens/s / transformers ``generate`` tokens/s       ≥ 0.8
5. one sweep point (first-token score, resuming mid-model) / a full forward pass
6. achieved forward GFLOP/s / measured ``torch.matmul`` peak on this machine
7. the whole default ``persona-refusal run`` (``--run-dir`` of a finished run, or
   ``--full-run`` to time one now): total and per stage                        ≤ 10 min
"""

from __future__ import annotations

import argparse
import gc
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


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run interleaved after one warm-up each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            gc.collect()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a matmul (``dtype``, float32 by default) the size of an MLP projection on 2048 rows."""
    a, b = torch.randn(2048, 896, dtype=dtype), torch.randn(4864, 896, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 2):
        t = time.perf_counter()
        torch.nn.functional.linear(a, b)
        best = max(best, 2 * 2048 * 896 * 4864 / (time.perf_counter() - t) / 1e9)
    return best


def hf_model_for(cm, dtype: torch.dtype = torch.float32):
    """The same weights as a transformers model, dequantized from the bundled GGUF
    (``None`` for models that are not bundled; transformers cannot re-save a GGUF model,
    so this takes a few seconds each run)."""
    from transformers import AutoModelForCausalLM

    from persona_refusal.assets import BUNDLED_MODELS, bundled_model_path

    key = next((k for k, v in BUNDLED_MODELS.items() if v.sha256 == cm.checksum), None)
    if key is None:
        return None
    path = bundled_model_path(key)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()


def generation_pair(cm, hf, prompts, new_tokens: int) -> dict:
    """``{"package": fn, "hf": fn}``: greedy decoding of ``prompts`` (one batch) with the
    package and with transformers ``generate`` on the same weights (no ``"hf"`` when
    ``hf`` is ``None``); every row decodes exactly ``new_tokens`` tokens when the chat
    model's stop tokens are cleared."""
    import persona_refusal as pr

    def gen_package():
        pr.generate(cm, prompts, max_new_tokens=new_tokens, batch_size=len(prompts), progress=False)

    fns = {"package": gen_package}
    if hf is not None:
        toks, mask = cm.tokenize(cm.format(prompts))

        def gen_hf():
            with torch.inference_mode():
                hf.generate(input_ids=toks, attention_mask=mask, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=cm.tokenizer.pad_token_id)
        fns["hf"] = gen_hf
    return fns


def forward_flops(cm, n_tokens: int, logits_positions: int) -> float:
    cfg = cm.model.cfg
    d, L = cfg.d_model, cfg.n_layers
    kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    per_layer = d * cfg.n_heads * cfg.d_head * 2 + 2 * d * kv + (3 if cfg.gated_mlp else 2) * d * cfg.d_mlp
    return 2.0 * (n_tokens * L * per_layer + logits_positions * d * cfg.d_vocab)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS and return it (kB), so
    the peak measured next is that of the work that follows, not of loading the model."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def _peak_rss_kb() -> int:
    return _status_kb("VmHWM")


def memory_probe(args) -> None:
    """Subprocess body: peak RSS of mean_activations vs run_with_cache at one setting."""
    import persona_refusal as pr

    cm = pr.load_chat_model(args.model, progress=False)
    filler = " Please answer in detail." * args.pad
    prompts = [p + filler for p in pr.bundled("harmless", "train")][: args.n]
    base = _reset_peak_rss()
    if args.mode == "package":
        pr.mean_activations(cm, prompts, progress=False)
    else:  # TransformerLens run_with_cache over the same prompts, all resid_pre hooks
        with torch.inference_mode():
            for i in range(0, len(prompts), 16):
                toks, mask = cm.tokenize(cm.format(prompts[i:i + 16]))
                _, cache = cm.model.run_with_cache(toks, attention_mask=mask,
                                                   names_filter=lambda n: n.endswith("hook_resid_pre"))
                del cache
    peak = _peak_rss_kb()
    toks = cm.tokenizer(cm.format(prompts[:1]), add_special_tokens=False)["input_ids"][0]
    print(json.dumps({"extra_mb": (peak - base) / 1024, "seq_len": len(toks)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--batch", type=int, default=32, help="prompts per forward batch")
    ap.add_argument("--gen-batch", type=int, default=32, help="rows for the generation comparison")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--run-dir", help="a finished `persona-refusal run` folder to report the whole-run time of")
    ap.add_argument("--full-run", action="store_true", help="time a fresh default `persona-refusal run` now")
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    ap.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="package", help=argparse.SUPPRESS)
    ap.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return 0

    import persona_refusal as pr
    from persona_refusal.activations import plan_batches, run_plan

    torch.manual_seed(0)
    rows: list[dict] = []

    def row(name, value, target, note=""):
        rows.append({"benchmark": name, "value": value, "target": target, "note": note})
        print(f"{name:<58} {value:>8.3f}   target {target:<8} {note}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus", flush=True)
    cm = pr.load_chat_model(args.model, progress=False)
    print(cm, flush=True)
    prompts = list(pr.bundled("harmful", "test"))[: args.batch]
    texts = cm.format(prompts)
    toks, mask = cm.tokenize(texts)
    n_real = int(mask.sum())
    grid = pr.extract_directions(cm, list(pr.bundled("harmful", "train"))[:16], list(pr.bundled("harmless", "train"))[:16],
                                 positions=[-1], progress=False)
    d = grid.direction(-1, cm.n_layers // 2)

    # 1 + 2: forward passes
    hf = hf_model_for(cm)
    model = cm.model

    def ht_plain():
        with torch.inference_mode():
            model(toks, attention_mask=mask)

    def ht_ablate():
        with pr.apply(cm, pr.Ablate(d)), torch.inference_mode():
            model(toks, attention_mask=mask)

    fns = {"ht": ht_plain, "ablate": ht_ablate}
    if hf is not None:
        def hf_plain():
            with torch.inference_mode():
                hf(input_ids=toks, attention_mask=mask)
        fns["hf"] = hf_plain
    t = interleaved(fns, args.repeats)
    print(f"\nforward of {args.batch} prompts ({toks.shape[1]} tokens padded, {n_real} real): "
          + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()), flush=True)
    row("1. ablation (every layer x 3 sites) / plain forward", t["ablate"] / t["ht"], "<= 1.10")
    if "hf" in t:
        row("2. HookedTransformer forward / transformers forward", t["ht"] / t["hf"], "<= 1.3")

    # 3: caching for diff-in-means vs plain forward over the same prompts
    def cache_package():
        pr.mean_activations(cm, prompts, progress=False)

    def cache_same_work():  # no prefix sharing: isolates the cost of the capture hooks
        plan = plan_batches(cm, texts, share_prefix=False, batch_size=args.batch)
        names = {cm.hook_name(l): cm.post_instruction_positions for l in range(cm.n_layers)}
        for _ in run_plan(cm, plan, capture=names, stop_at_layer=cm.n_layers, progress=False):
            pass

    t = interleaved({"plain": ht_plain, "package": cache_package, "same_work": cache_same_work}, args.repeats)
    row("3. caching for diff-in-means / plain forward", t["package"] / t["plain"], "<= 1.15",
        "prefix sharing, stop_at_layer, no unembedding")
    row("3b. same, without prefix sharing (hook overhead)", t["same_work"] / t["plain"], "<= 1.15")

    mem = {}
    for mode in ("package", "run_with_cache"):
        for pad in (0, 12):
            out = subprocess.run([sys.executable, __file__, "--memory-probe", "--model", args.model, "--mode", mode,
                                  "--pad", str(pad), "--n", "64"], capture_output=True, text=True, check=True)
            mem[(mode, pad)] = json.loads(out.stdout.strip().splitlines()[-1])
    for mode in ("package", "run_with_cache"):
        a, b = mem[(mode, 0)], mem[(mode, 12)]
        note = f"peak +{a['extra_mb']:.0f} MB at {a['seq_len']} tokens, +{b['extra_mb']:.0f} MB at {b['seq_len']}"
        row(f"3c. peak-memory growth, longer prompts ({mode})",
            b["extra_mb"] / max(a["extra_mb"], 1.0), "~1 (pkg)", note)

    # 4: generation throughput
    gen_prompts = list(pr.bundled("harmless", "test"))[: args.gen_batch]
    saved_stop = cm.stop_token_ids
    cm.stop_token_ids = ()  # equal work: no early stopping on either side

    fns = generation_pair(cm, hf, gen_prompts, args.new_tokens)
    t = interleaved(fns, max(2, args.repeats // 2))
    cm.stop_token_ids = saved_stop
    n_tok = args.gen_batch * args.new_tokens
    print(f"\ngeneration, {args.gen_batch} rows x {args.new_tokens} tokens: "
          + ", ".join(f"{k} {n_tok / v:.1f} tok/s" for k, v in t.items()), flush=True)
    if "hf" in t:
        row("4. generation tokens/s / transformers generate tokens/s", t["hf"] / t["package"], ">= 0.8")

    # 5: a sweep point resuming mid-model vs a full pass
    plan = plan_batches(cm, texts, batch_size=args.batch)
    layer = cm.n_layers // 2
    name = cm.hook_name(layer)
    resid = [o.captured[name] for o in run_plan(cm, plan, capture={name: None}, stop_at_layer=layer + 1, progress=False)]
    add = pr.AddVector(d, 2.0, layer=layer)

    def point_full():
        for _ in run_plan(cm, plan, interventions=[add], logits=True, progress=False):
            pass

    def point_resumed():
        for _ in run_plan(cm, plan, interventions=[add], logits=True, start_layer=layer, start_resid=resid,
                          progress=False):
            pass

    t = interleaved({"full": point_full, "resumed": point_resumed}, args.repeats)
    row(f"5. sweep point resumed at layer {layer} / full pass", t["resumed"] / t["full"], "~0.5",
        "one forward per point; earlier layers come from the cache")

    # 6: achieved GFLOP/s
    t = interleaved({"plain": ht_plain}, args.repeats)["plain"]
    achieved = forward_flops(cm, toks.numel(), toks.numel()) / t / 1e9
    peak = matmul_peak(args.repeats)
    row("6. achieved forward GFLOP/s / torch.matmul peak", achieved / peak, "report",
        f"{achieved:.0f} of {peak:.0f} GFLOP/s")

    # 7: whole run
    run_dir = args.run_dir
    if args.full_run:
        run_dir = tempfile.mkdtemp(prefix="bench-run-")
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "persona-refusal"), "run", "--out", run_dir, "--quiet",
                        "--no-figures", "--model", args.model], check=True)
        print(f"fresh run: {time.perf_counter() - t0:.0f} s wall", flush=True)
    if run_dir:
        info = json.loads((Path(run_dir) / "results.json").read_text())["run_info"]
        total = info.get("total_seconds") or sum(info["stage_seconds"].values())  # includes loading the model
        row("7. whole default run (minutes)", total / 60, "<= 10",
            ", ".join(f"{k} {v:.0f}s" for k, v in info["stage_seconds"].items()))

    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
