"""Compare a local model as this package loads it with transformers' own load of the same files.

Loads MODEL (a ``.gguf`` file or a Hugging Face folder) twice — with
``persona_refusal.load_chat_model`` (the converted ``HookedTransformer``) and with
``transformers.AutoModelForCausalLM.from_pretrained`` (float32, no remote code) — runs one
chat-formatted prompt cut to each length, and prints the largest difference in log-probability
over the whole vocabulary, per length and, for a model with a sliding attention window, per
band of positions (before the window is full, after)::

    python scripts/compare_with_transformers.py MODEL [--chat-template FILE] [--lengths 32 400 1000]

For a base model (no chat template) give one with ``--chat-template``. ``--float64`` also
loads the model in float64 with this package and prints both float32 models' distance from it
(a precision reference: same conversion, exact arithmetic — it tells which side's rounding a
difference comes from, not whether the configuration is right). Exit status 1 when the
difference to transformers exceeds ``--tolerance`` (default 1e-1), else 0. Float32 rounding
gives 1e-6 … 1e-4 on short prompts and grows with the prompt length; a wrong configuration
gives O(1) at once. docs/architectures.md records what this gives on real files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SENTENCES = ("The old lighthouse keeper wrote down the weather every morning at six.",
             "A small boat carried letters, bread and lamp oil across the bay twice a week.",
             "In winter the storms were so strong that the boat sometimes stayed in the harbour for days.",
             "His daughter learned to read the clouds before she could read a book.",
             "Years later she became a scientist who studied how the sea and the air exchange heat.")


def prompt_ids(cm, length: int):
    """The first ``length`` token ids of a chat-formatted prompt (a long user message)."""
    words, n = [], 0
    while True:
        words.append(f"{n + 1}. {SENTENCES[n % len(SENTENCES)]}")
        n += 1
        text = cm.format([" ".join(words)])[0]
        ids = cm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        if ids.shape[1] >= length:
            return ids[:, :length]


def load_transformers(path: Path):
    import torch
    import transformers

    kw = dict(dtype=torch.float32, trust_remote_code=False)
    if path.is_file():
        return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw).eval()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, **kw).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a .gguf file or a Hugging Face folder")
    ap.add_argument("--chat-template", type=Path, help="a Jinja chat template (for a base model)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 400, 1000], help="prompt lengths in tokens")
    ap.add_argument("--tolerance", type=float, default=1e-1, help="exit 1 above this max |Δ log-prob|")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--float64", action="store_true", help="also compare both with this package's float64 load")
    ap.add_argument("--sha256", action="store_true", help="also print the file's sha256 (a .gguf file)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    import persona_refusal as pr
    from persona_refusal.storage import sha256_file

    if args.threads:
        torch.set_num_threads(args.threads)
    cm = pr.load_chat_model(args.model, device="cpu", cache=False, progress=False, chat_template=args.chat_template)
    hf = load_transformers(args.model)
    ref = None
    if args.float64:
        ref = pr.load_chat_model(args.model, device="cpu", dtype=torch.float64, cache=False, progress=False,
                                 chat_template=args.chat_template)
    cfg = cm.model.cfg
    window = cfg.window_size if getattr(cfg, "use_local_attn", False) else None
    print(f"model: {args.model}" + (f" (sha256 {sha256_file(args.model)})" if args.sha256 and args.model.is_file()
                                    else ""))
    print(f"configuration: {cm.tl_config}")
    if window:
        global_layers = [i for i, t in enumerate(cfg.attn_types) if t == "global"]
        print(f"sliding window: {window} tokens; global layers {global_layers}, rotary base "
              f"{cfg.rotary_base:g} (local {cfg.rotary_base_local or cfg.rotary_base:g})")
    head = f"{'length':>6}  {'positions':>11}  max |Δ log-prob| vs transformers"
    print(head + ("  | vs float64: ours  transformers" if ref is not None else ""))
    worst = 0.0
    for length in args.lengths:
        ids = prompt_ids(cm, length)
        with torch.no_grad():
            theirs = hf(ids).logits.double().log_softmax(-1)[0]
            ours = cm.model(ids).double().log_softmax(-1)[0]
            d = (ours - theirs).abs().amax(-1)
            if ref is not None:
                exact = ref.model(ids).log_softmax(-1)[0]
                d_ours, d_theirs = (ours - exact).abs().amax(-1), (theirs - exact).abs().amax(-1)
                del exact
        del theirs, ours
        bands = [(0, length)]
        if window and length > window:
            bands = [(0, window), (window, length)]
        for a, b in bands:
            line = f"{length:>6}  {f'{a}-{b - 1}':>11}  {float(d[a:b].max()):>32.1e}"
            if ref is not None:
                line += f"  | {float(d_ours[a:b].max()):>15.1e}  {float(d_theirs[a:b].max()):>12.1e}"
            print(line)
        worst = max(worst, float(d.max()))
    return int(worst > args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
