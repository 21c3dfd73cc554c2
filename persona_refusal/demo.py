"""The core demonstration: find the refusal direction, ablate it, add it.

Context
-------
Arditi et al. (2024) show that one direction mediates refusal: projecting it out of the
residual stream at every layer stops the model refusing harmful requests, and adding it
makes the model refuse harmless ones. :func:`run_ablation_demo` reproduces both on any
chat model with the package's own prompt sets: the diff-in-means grid on the train
split, selection on the val split, then judged generations on the test split —
harmful prompts with and without ablation, harmless prompts with and without addition —
with Wilson 95% intervals, the KL divergence that ablation causes on harmless prompts,
and the equivalence of weight orthogonalisation with hook ablation.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from persona_refusal.directions import Direction
from persona_refusal.errors import ConfigError
from persona_refusal.extraction import extract_directions
from persona_refusal.selection import select_refusal_direction
from persona_refusal.evaluation import (Judge, ModelJudge, Rate, generate_details, get_judge, judge_name,
                                         judge_responses, kl_divergence_on, last_logits, refusal_scores)
from persona_refusal.interventions import Ablate, AddVector, apply, orthogonalize_weights
from persona_refusal.models import ChatModel, load_chat_model
from persona_refusal.prompts import bundled
from persona_refusal.storage import claim_folder, write_json
from persona_refusal.study.config import DTYPES, resolve_device

__all__ = ["run_ablation_demo", "check_demo_args"]

_SPLIT_SIZES = {"n_train": ("train", 128), "n_val": ("val", 32), "n_eval": ("test", 100)}
"""Prompts per side in each bundled split the demo reads."""
_FLAGS = {"n_eval": "--n-eval", "max_new_tokens": "--max-new-tokens", "judge": "--judge"}
"""The ablation-demo flag of each argument that has one."""


def _flag(name: str) -> str:
    """How the fix names an argument: its flag where it has one, else its name."""
    return _FLAGS.get(name, name)


def _whole(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}", hint="use a whole number")
    return v


DEMO_FORMAT = "persona_refusal.demo/1"
"""The manifest format of an ablation-demo folder (:func:`persona_refusal.storage.claim_folder`)."""
DEMO_ENTRIES = ["refusal.json", "refusal.safetensors", "results.json"]
"""What the demo writes in its folder."""


def check_demo_args(out, *, n_train=None, n_val=None, n_eval=None, selection_positions=None, max_new_tokens=32,
                    fallback="relative", add_coeffs=(1.0, 2.0, 4.0, 8.0, 16.0), device=None, dtype=None,
                    judge="strict") -> None:
    """Check every argument of :func:`run_ablation_demo` before anything is loaded or run:
    a one-line :class:`~persona_refusal.errors.ConfigError` for the first bad one.

    Example:
        >>> check_demo_args("runs/x", n_eval=0)
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: n_eval 0 is out of range (use --n-eval 1..100: the bundled test split has 100 prompts per side)
    """
    if out is not None:
        if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
            raise ConfigError(f"the output folder (--out) is empty ({str(out)!r})",
                              hint="give --out a folder path, e.g. --out runs/ablation-demo (or out=None to write "
                                   "nothing)")
        p = Path(out).expanduser()
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{out} exists and is not a folder", hint="give --out a folder path")
        claim_folder(p, DEMO_FORMAT, DEMO_ENTRIES, what="the ablation demo", write=False)
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"cannot create the output folder {out}: {parent} is not a folder",
                              hint="give --out a folder path")
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_eval", n_eval)):
        if v is None:
            continue
        split, size = _SPLIT_SIZES[name]
        if not 1 <= _whole(name, v) <= size:
            raise ConfigError(f"{name} {v} is out of range",
                              hint=f"use {_flag(name)} 1..{size}: the bundled {split} split has {size} prompts per "
                                   f"side")
    if not 1 <= _whole("max_new_tokens", max_new_tokens):
        raise ConfigError(f"max_new_tokens {max_new_tokens} is out of range",
                          hint="use --max-new-tokens 1 or more")
    if selection_positions is not None:
        if not isinstance(selection_positions, (list, tuple)) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x < 0 for x in selection_positions):
            raise ConfigError(f"selection_positions must be a list of negative integers, got "
                              f"{selection_positions!r}", hint="count positions from the end, e.g. [-1] or [-3, -2, -1]")
    if fallback not in (None, "relative"):
        raise ConfigError(f"unknown selection fallback {fallback!r}", hint="use None or 'relative'")
    try:
        coeffs = [float(c) for c in add_coeffs]
    except (TypeError, ValueError):
        raise ConfigError(f"add_coeffs must be a list of numbers, got {add_coeffs!r}",
                          hint="write it as a list, e.g. [1.0, 2.0, 4.0]") from None
    if not coeffs or not all(math.isfinite(c) for c in coeffs):
        raise ConfigError(f"add_coeffs must hold at least one finite strength, got {add_coeffs!r}",
                          hint="write it as a list, e.g. [1.0, 2.0, 4.0]")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use {', '.join(DTYPES)}")
    resolve_device(device)  # a device this machine lacks
    if isinstance(judge, str):
        made = get_judge(judge)  # an unknown judge name is a one-line error; nothing is loaded
        if isinstance(made, ModelJudge):
            made.check()  # a judge model that is not installed or does not exist
    elif not callable(judge):
        raise ConfigError(f"judge must be a judge name or a Judge, got {judge!r}",
                          hint="use strict, keyword, lenient, model or model:NAME")


def run_ablation_demo(
    model: str | ChatModel = "demo",
    out: str | os.PathLike | None = "runs/ablation-demo",
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_eval: int | None = None,
    selection_positions: list[int] | None = None,
    max_new_tokens: int = 32,
    fallback: str | None = "relative",
    add_coeffs: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0),
    device: str | None = None,
    dtype: str | None = None,
    judge: str | Judge = "strict",
    progress: bool = True,
) -> dict:
    """Refusal direction → ablation on harmful prompts, addition on harmless ones.

    Args:
        model: a model name/path or a loaded :class:`ChatModel`.
        out: folder for ``results.json`` and the direction (``None``: write nothing).
        n_train, n_val, n_eval: prompts per side from the bundled train/val/test splits
            (default: all — 128/32/100).
        selection_positions: candidate positions (default ``[-1]``, the last prompt token;
            ``None`` in the library function means every post-instruction position).
        max_new_tokens: reply length for the judge.
        fallback: passed to :func:`select_refusal_direction`. ``"relative"`` (default)
            accepts, when no candidate meets Arditi et al.'s absolute induce threshold
            (small models rarely do), the best-bypass candidate whose induce score beats
            the unedited harmless score; ``None`` raises instead. Which rule chose the
            direction is recorded under ``refusal_direction.fallback_used``.
        device, dtype: where and in which dtype a model given by name is loaded
            (default: ``"auto"``, CUDA when available, and ``"float32"``); a loaded
            :class:`ChatModel` runs as it is.
        judge: the judge of the rates: a name of :func:`persona_refusal.evaluation.get_judge`
            (``strict`` — the default —, ``keyword``, ``lenient``, ``model``,
            ``model:NAME``) or any :class:`~persona_refusal.evaluation.Judge`. A model judge
            loads its model beside the demo's (on the same device, in the same dtype) when it
            first judges; ``model:NAME`` with the demo's own model name reuses that model.

    Returns:
        The results dictionary (also written to ``out/results.json``).

    Raises:
        ConfigError: a bad argument (see :func:`check_demo_args`), checked before the model
            loads; a reply length that does not fit the model's context window, checked
            right after.

    Example:
        >>> results = run_ablation_demo("demo", "runs/ablation-demo", n_eval=20)   # doctest: +SKIP
        >>> results["rates"]["harmful_ablated"]["refusal"]["rate"]                  # doctest: +SKIP
    """
    check_demo_args(out, n_train=n_train, n_val=n_val, n_eval=n_eval, selection_positions=selection_positions,
                    max_new_tokens=max_new_tokens, fallback=fallback, add_coeffs=add_coeffs, device=device, dtype=dtype,
                    judge=judge)
    t0 = time.time()
    cm = model if isinstance(model, ChatModel) else load_chat_model(model, device=resolve_device(device), dtype=dtype,
                                                                    progress=progress)
    if isinstance(judge, str):
        the_judge = get_judge(judge, device=str(cm.device), dtype=str(cm.model.cfg.dtype).replace("torch.", ""),
                              progress=progress, models={model: cm} if isinstance(model, str) else {})
        judge_record = judge_name(judge)
    else:
        the_judge, judge_record = judge, type(judge).__name__
    train_h, train_b = bundled("harmful", "train").head(n_train), bundled("harmless", "train").head(n_train)
    val_h, val_b = bundled("harmful", "val").head(n_val), bundled("harmless", "val").head(n_val)
    test_h, test_b = bundled("harmful", "test").head(n_eval), bundled("harmless", "test").head(n_eval)
    if max_new_tokens >= cm.n_ctx:
        raise ConfigError(f"max_new_tokens {max_new_tokens} does not fit the context window of {cm.n_ctx} tokens",
                          hint=f"use --max-new-tokens below {cm.n_ctx}")
    # the replies are generated last: a prompt too long for them fails now, not after the grid
    cm.tokenize(cm.format(list(test_h) + list(test_b)), reserve=max_new_tokens)
    positions = selection_positions or [-1]
    grid = extract_directions(cm, train_h, train_b, positions=positions, progress=progress)
    refusal, report = select_refusal_direction(cm, grid, val_h, val_b, fallback=fallback, progress=progress)

    # the addition strength, calibrated on the harmless val split (never on the test split)
    val_scores = {float(c): float(refusal_scores(cm, val_b, interventions=[AddVector(refusal, float(c))],
                                                 progress=False).mean()) for c in add_coeffs}
    passing = [c for c, v in val_scores.items() if v >= 0.0]
    c_add = min(passing) if passing else max(val_scores, key=val_scores.get)

    def judged(prompts, interventions, desc):
        g = generate_details(cm, list(prompts), interventions=interventions, max_new_tokens=max_new_tokens,
                             desc=desc, progress=progress)
        labels = judge_responses(prompts, g.texts, the_judge)
        return g, labels

    runs = {
        "harmful_baseline": judged(test_h, [], "harmful: baseline"),
        "harmful_ablated": judged(test_h, [Ablate(refusal)], "harmful: ablated"),
        "harmless_baseline": judged(test_b, [], "harmless: baseline"),
        "harmless_added": judged(test_b, [AddVector(refusal, c_add)], f"harmless: refusal added (c={c_add:g})"),
    }
    rates = {}
    for name, (g, labels) in runs.items():
        rates[name] = {lab: Rate(labels.count(lab), len(labels)).to_dict() for lab in ("refusal", "compliance", "degenerate")}
        rates[name]["first_token_score_mean"] = float(g.first_scores.mean())
    kl = kl_divergence_on(cm, list(test_b), [Ablate(refusal)], progress=False)
    with torch.inference_mode():
        ortho = orthogonalize_weights(cm, refusal)
        hook = last_logits(cm, list(test_h[:8]), interventions=[Ablate(refusal)], progress=False)
        weights = last_logits(ortho, list(test_h[:8]), progress=False)
        del ortho
    results = {
        "model": cm.fingerprint(),
        "refusal_direction": {"layer": refusal.layer, "position": refusal.position, "norm": refusal.norm,
                              "selection": report.chosen,
                              "fallback_used": report.settings.get("fallback_used")},
        "rates": rates,
        "addition": {"coeff": c_add, "layer": refusal.layer, "val_mean_log_odds": {f"{c:g}": v for c, v in val_scores.items()},
                     "rule": "smallest c with mean first-token refusal log-odds >= 0 on harmless val, else the highest",
                     "threshold_met": bool(passing)},
        "kl_ablation_harmless": {"mean": float(kl.mean()), "median": float(kl.median())},
        "orthogonalization_max_logit_diff": float((hook - weights).abs().max()),
        "sizes": {"train": [len(train_h), len(train_b)], "val": [len(val_h), len(val_b)],
                  "test": [len(test_h), len(test_b)]},
        "max_new_tokens": max_new_tokens,
        "judge": judge_record,
        "judge_details": the_judge.describe() if isinstance(the_judge, ModelJudge) else None,
        "examples": {name: [{"instruction": i, "reply": r, "label": l}
                            for i, r, l in list(zip(prompts, g.texts, labels))[:4]]
                     for (name, (g, labels)), prompts in zip(runs.items(), (test_h, test_h, test_b, test_b))},
        "selection_report": report.to_dict(),
        "run_info": {"seconds": round(time.time() - t0, 1), "device": str(cm.device),
                     "dtype": str(cm.model.cfg.dtype).replace("torch.", "")},
    }
    if out is not None:
        out = claim_folder(Path(out).expanduser(), DEMO_FORMAT, DEMO_ENTRIES, what="the ablation demo")
        refusal.save(out / "refusal")
        write_json(out / "results.json", results)
    return results
