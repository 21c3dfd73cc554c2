"""GPU benchmark: persona_refusal's cost on a model of Qwen2.5-7B-Instruct's shape, as ratios.

Run on a CUDA machine (defaults: bfloat16, the full 7B shape, 32 rows × 64 new tokens,
3 repeats — sized to finish within 5 minutes on one H200)::

    python bench/gpu.py                                  # --device cuda --dtype bfloat16
    python bench/gpu.py --dtype float16 --out gpu.json   # also write the table as JSON

and on a CPU, with tiny widths, in seconds (what ``tests/test_bench_gpu.py`` runs)::

    python bench/gpu.py --device cpu --dtype float32 --layers 2 --scale 0.03

Nothing is downloaded and no weights travel: a transformers ``Qwen2ForCausalLM`` is built
from a hand-written config of Qwen2.5-7B-Instruct's shape (28 layers, d_model 3584, 28
query / 4 key-value heads of width 128, gated SiLU MLP of width 18944, vocabulary 152064,
RMSNorm eps 1e-6, rotary base 1e6, untied embeddings, q/k/v biases), with seeded random
weights, directly on the device in the chosen dtype. TransformerLens converts those same
weights into a ``HookedTransformer`` (its Qwen2 converter, processed as the package loads
real models: norms folded, value biases folded, the unembedding centred; then the
package's weight layout), wrapped in a :class:`~persona_refusal.ChatModel` with the tiny
model's tokenizer (prompts need only token ids below the vocabulary size; the replies of
random weights are meaningless). The ablated direction is a seeded random unit vector.

Every timing is the median of ``--repeats`` runs taken interleaved (A, B, A, B, …, after a
warm-up of each), with the device synchronised around each run. Rows:

0. same weights: max |log-softmax difference| HookedTransformer vs transformers (a check
   of the conversion: ~1e-5 in float32, ~1e-1 in bfloat16 on random weights)
1. forward under directional ablation at every layer and site / plain forward     ≤ 1.10
2. batched greedy generation tokens/s, package ``generate`` / transformers
   ``generate`` on the same weights, same rows and new tokens (greedy, no early stop;
   the package runs the prompts' shared chat-template prefix once per batch, as it
   always does)                                                                    ≥ 0.8
   (2b: the package's generation under ablation at every layer / without, reported)
3. peak GPU memory (``torch.cuda.max_memory_allocated``) above the resident weights of
   each measured call, and the bytes of both copies of the weights (CUDA only)

Nothing here is a test of speed: ``tests/test_bench_gpu.py`` runs it tiny on the CPU and
checks only that every row is there and finite.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

QWEN25_7B = {
    "n_layers": 28, "d_model": 3584, "n_heads": 28, "n_kv_heads": 4, "d_head": 128, "d_mlp": 18944,
    "vocab": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
}
"""Qwen2.5-7B-Instruct's shape (its ``config.json``), written down here: nothing is fetched."""


# ============================================================================ the models
def shape(layers: int | None, scale: float) -> dict:
    """The benchmark model's shape: Qwen2.5-7B's, with ``layers`` blocks (default 28) and
    widths times ``scale``: ``d_head`` (kept even, for rotary), ``d_mlp`` and the vocabulary
    shrink, the 28 query and 4 key-value heads stay, and ``d_model = 28 · d_head``."""
    q = dict(QWEN25_7B)
    if layers is not None:
        q["n_layers"] = layers
    if scale != 1.0:
        q["d_head"] = max(4, 2 * round(q["d_head"] * scale / 2))
        q["d_model"] = q["n_heads"] * q["d_head"]
        q["d_mlp"] = max(8, round(q["d_mlp"] * scale))
        q["vocab"] = max(1024, round(q["vocab"] * scale))
    return q


def build_hf(q: dict, *, device: str, dtype: torch.dtype, seed: int, n_ctx: int):
    """A transformers ``Qwen2ForCausalLM`` of shape ``q`` with seeded random weights, built
    on ``device`` in ``dtype`` (no float32 copy first, nothing downloaded)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=q["vocab"], hidden_size=q["d_model"], intermediate_size=q["d_mlp"],
        num_hidden_layers=q["n_layers"], num_attention_heads=q["n_heads"], num_key_value_heads=q["n_kv_heads"],
        hidden_act="silu", max_position_embeddings=n_ctx, rms_norm_eps=q["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": q["rope_theta"]}, tie_word_embeddings=False,
        use_sliding_window=False, architectures=["Qwen2ForCausalLM"],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        hf = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    return hf.to(device=device, dtype=dtype).eval()  # a no-op unless transformers built it elsewhere


def build_hooked(hf, *, device: str, dtype: torch.dtype, n_ctx: int):
    """The same weights as a processed ``HookedTransformer``, through TransformerLens' own
    Qwen2 converter (it reads the architecture from a ``config.json`` in a folder, as
    :mod:`persona_refusal.models` gives it one), laid out as the package lays out every model."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    from persona_refusal.layout import optimize_layout

    hf_cfg = hf.config.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(hf_cfg, default=str))
        cfg = loading.get_pretrained_model_config(tmp, hf_cfg=hf_cfg, dtype=dtype, fold_ln=True, device=device,
                                                  n_ctx=n_ctx)
        state = loading.get_pretrained_state_dict(tmp, cfg, hf_model=hf, dtype=dtype)
    cfg.tokenizer_name = None  # the folder held only the config: no tokenizer to load from it
    cfg.model_name = "qwen2.5-7b-shape-random"
    with torch.device(device):  # allocated where it runs (no host copy of the weights first)
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=True)
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                      fold_value_biases=True)
    del state
    optimize_layout(model)
    return model.eval()


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ============================================================================ timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each callable, run interleaved after one warm-up each, the device
    synchronised before and after every run."""
    for f in fns.values():
        f()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            gc.collect()
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_above_resident(f: Callable[[], object], device: str) -> float | None:
    """GiB that one call of ``f`` allocates at its peak beyond what was resident before
    (``None`` off CUDA)."""
    if not device.startswith("cuda"):
        return None
    gc.collect()
    torch.cuda.empty_cache()
    _sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    f()
    _sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**30


# ============================================================================ the benchmark
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu, or auto")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    ap.add_argument("--layers", type=int, default=None, help="blocks (default: 28, Qwen2.5-7B's)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply d_head, d_mlp and the vocabulary by this (default 1: the 7B shape)")
    ap.add_argument("--rows", type=int, default=32, help="prompts per batch, forward and generation (default 32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table (and the setup) as JSON here")
    args = ap.parse_args(argv)

    import persona_refusal as pr
    from persona_refusal.errors import PersonaRefusalError
    from persona_refusal.study.config import DTYPES, resolve_device
    from persona_refusal.tiny import build_tiny_tokenizer

    t_start = time.perf_counter()
    try:
        if args.dtype not in DTYPES:
            raise pr.ConfigError(f"unknown dtype {args.dtype!r}", hint=f"use {', '.join(DTYPES)}")
        for name in ("layers", "rows", "new_tokens", "repeats"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise pr.ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not 0 < args.scale <= 1:
            raise pr.ConfigError(f"--scale must be in (0, 1], got {args.scale}")
        device = resolve_device(args.device)
    except PersonaRefusalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    q = shape(args.layers, args.scale)
    tokenizer = build_tiny_tokenizer()
    if q["vocab"] < len(tokenizer):
        q["vocab"] = len(tokenizer)
    n_ctx = 2048  # as TransformerLens caps Qwen2's 32k context: the attention mask is n_ctx²
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    print(f"torch {torch.__version__}, device {device}{f' ({gpu})' if gpu else ''}, dtype {args.dtype}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    print("shape: " + ", ".join(f"{k} {v:g}" for k, v in q.items()), flush=True)

    rows: list[dict] = []

    def row(name, value, target, note=""):
        rows.append({"benchmark": name, "value": value, "target": target, "note": note})
        if not isinstance(value, (int, float)):
            shown = f"{'n/a':>8}"
        else:
            shown = f"{value:>8.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:>8.1e}"
        print(f"{name:<62} {shown}   target {target:<8} {note}", flush=True)

    # ---- the same random weights twice: transformers, and the package's HookedTransformer
    root, level = logging.getLogger(), logging.getLogger().level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)  # TransformerLens' conversion notices go through the root logger
        t0 = time.perf_counter()
        try:
            hf = build_hf(q, device=device, dtype=dtype, seed=args.seed, n_ctx=n_ctx)
            model = build_hooked(hf, device=device, dtype=dtype, n_ctx=n_ctx)
        finally:
            root.setLevel(level)
    gc.collect()
    cm = pr.ChatModel(model, tokenizer, model_id=f"bench/qwen2.5-7b-shape-random-{args.seed}",
                      checksum="0" * 64, source="bench")
    t_build = time.perf_counter() - t0
    print(f"{cm}\nbuilt both models in {t_build:.1f} s: weights {weight_bytes(model) / 2**30:.3g} GiB "
          f"(HookedTransformer) + {weight_bytes(hf) / 2**30:.3g} GiB (transformers)", flush=True)

    bank = list(pr.bundled("harmful", "test")) + list(pr.bundled("harmless", "test"))
    prompts = [bank[i % len(bank)] for i in range(args.rows)]
    toks, mask = cm.tokenize(cm.format(prompts), reserve=args.new_tokens)
    g = torch.Generator().manual_seed(args.seed + 1)
    d = pr.Direction(vector=torch.randn(cm.d_model, generator=g), layer=cm.n_layers // 2, name="random",
                     model_id=cm.model_id, model_checksum=cm.checksum)
    ablate = pr.Ablate(d)  # every layer, resid_pre + attn_out + mlp_out

    # 0: the conversion kept the weights (log-probs: the centred unembedding shifts logits)
    with torch.inference_mode():
        lp_ht = model(toks, attention_mask=mask).float().log_softmax(-1)
        lp_hf = hf(input_ids=toks, attention_mask=mask).logits.float().log_softmax(-1)
        real = mask.bool()
        diff = float((lp_ht - lp_hf).abs()[real].max())
        del lp_ht, lp_hf
    row("0. same weights: max |log p(HookedTransformer) - log p(transformers)|", diff, "report",
        "conversion check: ~1e-5 in float32")

    # 1: forward under ablation at every layer and site / plain forward
    def ht_plain():
        with torch.inference_mode():
            model(toks, attention_mask=mask)

    def ht_ablate():
        with pr.apply(cm, ablate), torch.inference_mode():
            model(toks, attention_mask=mask)

    t = interleaved({"plain": ht_plain, "ablate": ht_ablate}, args.repeats, device)
    n_real = int(mask.sum())
    print(f"\nforward of {args.rows} prompts ({toks.shape[1]} tokens padded, {n_real} real): "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()), flush=True)
    row("1. ablation (every layer x 3 sites) / plain forward", t["ablate"] / t["plain"], "<= 1.10")
    mem = {"forward_plain": peak_above_resident(ht_plain, device),
           "forward_ablate": peak_above_resident(ht_ablate, device)}

    # 2: generation tokens/s, package vs transformers, same rows, same new tokens, greedy
    saved_stop = cm.stop_token_ids
    cm.stop_token_ids = ()  # equal work: every row decodes --new-tokens on both sides
    new = args.new_tokens

    def gen_package():
        pr.generate(cm, prompts, max_new_tokens=new, batch_size=args.rows, progress=False)

    def gen_ablated():
        pr.generate(cm, prompts, interventions=[ablate], max_new_tokens=new, batch_size=args.rows, progress=False)

    def gen_hf():
        with torch.inference_mode():
            hf.generate(input_ids=toks, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=None)

    try:
        t = interleaved({"package": gen_package, "hf": gen_hf, "ablated": gen_ablated}, args.repeats, device)
        mem.update(generate_package=peak_above_resident(gen_package, device),
                   generate_hf=peak_above_resident(gen_hf, device))
    finally:
        cm.stop_token_ids = saved_stop
    n_tok = args.rows * new
    print(f"\ngeneration, {args.rows} rows x {new} tokens: "
          + ", ".join(f"{k} {n_tok / v:.1f} tok/s" for k, v in t.items()), flush=True)
    row("2. generation tokens/s / transformers generate tokens/s", t["hf"] / t["package"], ">= 0.8",
        f"{n_tok / t['package']:.0f} vs {n_tok / t['hf']:.0f} tok/s")
    row("2b. generation under ablation (every layer) / plain generation", t["ablated"] / t["package"], "report")

    # 3: memory
    print("", flush=True)
    for k, v in mem.items():
        row(f"3. peak GPU memory above the weights, GiB: {k}", v, "report")
    row("3. weights, GiB: HookedTransformer", weight_bytes(model) / 2**30, "report")
    row("3. weights, GiB: transformers", weight_bytes(hf) / 2**30, "report")
    if device.startswith("cuda"):
        row("3. peak GPU memory of the whole benchmark, GiB", torch.cuda.max_memory_allocated() / 2**30, "report",
            "both copies of the weights resident")

    elapsed = time.perf_counter() - t_start
    print(f"\nelapsed {elapsed:.1f} s (building the models {t_build:.1f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "device": device, "gpu": gpu, "dtype": args.dtype, "shape": q, "rows": args.rows,
            "new_tokens": new, "repeats": args.repeats, "elapsed_s": elapsed, "build_s": t_build,
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "results": rows,
        }, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
