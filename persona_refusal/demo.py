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

Run folder
----------
With an output folder the demo follows the studies' run-folder rules
(:class:`~persona_refusal.study.store.RunStore`): ``config.json`` records what defines the run
(arguments, model fingerprint), the folder is locked while it runs, each step is checkpointed
(``checkpoints/``: the baseline check, the selected direction in ``directions/refusal``, the
addition strength, each judged condition, the KL and the orthogonalisation check), so a run
stopped by Ctrl-C resumes where it stopped, and a folder holding another configuration is
refused unless ``force`` (which removes only what a run wrote there). :data:`DEMO_PRESETS`
holds ``smoke`` (a few prompts, short replies: a check that everything runs) and ``default``.
It starts with the baseline check of :mod:`persona_refusal.study.baseline` on the harmful val
prompts: a model that barely refuses gets a warning (console, ``results.json``), not a stop.
"""

from __future__ import annotations

import logging
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
from persona_refusal.interventions import Ablate, AddVector, orthogonalize_weights
from persona_refusal.models import ChatModel, load_chat_model
from persona_refusal.prompts import PromptSet, bundled
from persona_refusal.storage import sha256_json, write_json
from persona_refusal.study.baseline import BASELINE_MAX_NEW_TOKENS, baseline_record
from persona_refusal.study.config import DTYPES, resolve_device
from persona_refusal.study.store import RunStore

__all__ = ["run_ablation_demo", "check_demo_args", "DEMO_PRESETS", "candidate_layers"]

DEMO_PRESETS: dict[str, dict] = {
    "default": {},
    "smoke": {"n_train": 32, "n_val": 4, "n_eval": 4, "max_new_tokens": 16, "n_candidates": 4,
              "add_coeffs": (1.0, 4.0, 16.0)},
}
"""Named sizes of the demo (explicit arguments override them): ``default`` reads every bundled
prompt (128 train / 32 val / 100 test per side, 32-token replies) and selects among every layer;
``smoke`` checks quickly that everything runs on a model: 32 / 4 / 4 prompts, 16-token replies,
4 candidate layers, 3 addition strengths (on the demo model and a 2-core CPU: 1.0 min with the
model cached, 2.6 min on first use, which assembles and converts the model)."""
_FORMAT = "persona_refusal.ablation_demo/1"

log = logging.getLogger(__name__)

_SPLIT_SIZES = {"n_train": ("train", 128), "n_val": ("val", 32), "n_eval": ("test", 100)}
"""Prompts per side in each bundled split the demo reads."""
_FLAGS = {"n_candidates": "--n-candidates", "n_train": "--n-train", "n_val": "--n-val", "n_eval": "--n-eval", "max_new_tokens": "--max-new-tokens",
          "judge": "--judge"}
"""The ablation-demo flag of each argument that has one."""


def _flag(name: str) -> str:
    """How the fix names an argument: its flag where it has one, else its name."""
    return _FLAGS.get(name, name)


def _whole(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}", hint="use a whole number")
    return v


def check_demo_args(out, *, n_train=None, n_val=None, n_eval=None, selection_positions=None, max_new_tokens=32,
                    fallback="relative", add_coeffs=(1.0, 2.0, 4.0, 8.0, 16.0), device=None, dtype=None,
                    judge="strict", n_candidates=None) -> None:
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
    if n_candidates is not None and not 1 <= _whole("n_candidates", n_candidates):
        raise ConfigError(f"n_candidates {n_candidates} is out of range", hint="use --n-candidates 1 or more")
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
    force: bool = False,
    chat_template: str | os.PathLike | None = None,
    warn=None,
    n_candidates: int | None = None,
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

        progress: progress bars.
        force: start over in a folder holding a demo run of another configuration (removes
            only what a run wrote there).
        chat_template: a Jinja chat template file for a model without one (a model given by name).
        warn: where the baseline check's warning goes as soon as it is known (default: the log).
        n_candidates: select among this many candidate layers, evenly spaced from 30% to 60% of
            the depth (default: every layer, as Arditi et al.).

    Returns:
        The results dictionary (also written to ``out/results.json``). ``refusal_baseline``
        is the baseline check (:mod:`persona_refusal.study.baseline`).

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
                    judge=judge, n_candidates=n_candidates)
    t0 = time.time()
    cm = model if isinstance(model, ChatModel) else load_chat_model(model, device=resolve_device(device), dtype=dtype,
                                                                    progress=progress, chat_template=chat_template)
    the_judge, judge_record = _demo_judge(judge, model, cm, progress)
    splits = _demo_splits(n_train, n_val, n_eval)
    _check_reply_length(cm, splits, max_new_tokens)
    positions = selection_positions or [-1]
    layers = candidate_layers(cm.n_layers, n_candidates)
    record = _demo_record(cm, splits, positions, layers, max_new_tokens=max_new_tokens, fallback=fallback,
                          add_coeffs=add_coeffs, judge_record=judge_record)
    store = RunStore(out, record, force=force) if out is not None else None
    try:
        return _demo(cm, store, the_judge, judge_record, splits, positions, layers, max_new_tokens, fallback,
                     add_coeffs, progress, warn, t0)
    finally:
        if store is not None:
            store.close()


def _demo_judge(judge: str | Judge, model: str | ChatModel, cm: ChatModel, progress: bool) -> tuple[Judge, str]:
    """The demo's judge and how its record names it (a model judge named by the demo's own
    model name reuses the loaded model)."""
    if isinstance(judge, str):
        the_judge = get_judge(judge, device=str(cm.device), dtype=str(cm.model.cfg.dtype).replace("torch.", ""),
                              progress=progress, models={model: cm} if isinstance(model, str) else {})
        return the_judge, judge_name(judge)
    return judge, type(judge).__name__


def _demo_splits(n_train: int | None, n_val: int | None, n_eval: int | None) -> tuple[PromptSet, ...]:
    """The bundled prompts the demo reads: train, val and test, harmful then harmless each."""
    return (bundled("harmful", "train").head(n_train), bundled("harmless", "train").head(n_train),
            bundled("harmful", "val").head(n_val), bundled("harmless", "val").head(n_val),
            bundled("harmful", "test").head(n_eval), bundled("harmless", "test").head(n_eval))


def _check_reply_length(cm: ChatModel, splits: tuple[PromptSet, ...], max_new_tokens: int) -> None:
    """The replies fit the context window (checked before the grid: the replies are generated last)."""
    test_h, test_b = splits[4], splits[5]
    if max_new_tokens >= cm.n_ctx:
        raise ConfigError(f"max_new_tokens {max_new_tokens} does not fit the context window of {cm.n_ctx} tokens",
                          hint=f"use --max-new-tokens below {cm.n_ctx}")
    cm.tokenize(cm.format(list(test_h) + list(test_b)), reserve=max_new_tokens)


def _demo_record(cm: ChatModel, splits: tuple[PromptSet, ...], positions: list[int], layers: list[int] | None, *,
                 max_new_tokens: int, fallback: str | None, add_coeffs: tuple[float, ...], judge_record: str) -> dict:
    """The identity of a demo run (its folder resumes only a run with the same one)."""
    train_h, train_b, val_h, val_b, test_h, test_b = splits
    return {
        "format": _FORMAT,
        "config": {"n_train": len(train_h), "n_val": len(val_h), "n_eval": len(test_h), "positions": positions,
                   "max_new_tokens": max_new_tokens, "fallback": fallback,
                   "add_coeffs": [float(c) for c in add_coeffs], "judge": judge_record,
                   "dtype": str(cm.model.cfg.dtype).replace("torch.", ""),
                   **({"candidate_layers": layers} if layers is not None else {})},
        "inputs": {name: sha256_json(list(ps)) for name, ps in
                   (("train", list(train_h) + list(train_b)), ("val", list(val_h) + list(val_b)),
                    ("test", list(test_h) + list(test_b)))},
        "resolved": {},
        "model": cm.fingerprint(),
    }


def candidate_layers(n_layers: int, n_candidates: int | None) -> list[int] | None:
    """``n_candidates`` layers evenly spaced from 30% to 60% of the depth, where refusal directions
    of chat models usually are (``None``: every layer).

    Example:
        >>> candidate_layers(24, 4)
        [7, 10, 12, 14]
    """
    if n_candidates is None:
        return None
    lo, hi = 0.3 * n_layers, 0.6 * n_layers
    k = max(1, int(n_candidates))
    return sorted({int(round(lo + (hi - lo) * i / max(k - 1, 1))) for i in range(k)} if k > 1 else {int(round(lo))})


def _demo(cm, store, the_judge, judge_record, splits, positions, layers, max_new_tokens, fallback, add_coeffs,
          progress, warn, t0) -> dict:
    """The demo's steps, each checkpointed in ``store`` (``None``: nothing is written)."""
    train_h, train_b, val_h, val_b, test_h, test_b = splits

    seconds: dict[str, float] = {}

    def point(stage: str, key: str, compute):
        t = time.perf_counter()
        try:
            return compute() if store is None else store.point(stage, key, compute)
        finally:
            seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - t, 2)

    def judged(prompts, interventions, desc, n_tokens=max_new_tokens):
        g = generate_details(cm, list(prompts), interventions=interventions, max_new_tokens=n_tokens,
                             desc=desc, progress=progress)
        labels = judge_responses(prompts, g.texts, the_judge)
        return {"texts": g.texts, "labels": labels, "first_scores": g.first_scores.tolist()}

    # the baseline check: does the unsteered model refuse at all? (warns; never stops the demo)
    n_check = min(max_new_tokens, BASELINE_MAX_NEW_TOKENS)
    check = point("refusal_baseline", "none", lambda: judged(val_h, [], "baseline check: harmful val", n_check))
    baseline = baseline_record(check["labels"], judge=judge_record, max_new_tokens=n_check)
    if baseline["warning"]:
        (warn or (lambda text: log.warning("%s", text)))(baseline["warning"])

    refusal, chosen = None, None
    if store is not None:
        saved = store.out / "directions" / "refusal"
        chosen = store.get("selection", "report") if store.has("selection", "report") else None
        if chosen is not None:
            refusal = store.read_back("the selected direction", [saved.with_suffix(".json"),
                                                                  saved.with_suffix(".safetensors")],
                                      lambda: Direction.load(saved))
    if refusal is None:
        t_select = time.perf_counter()
        grid = extract_directions(cm, train_h, train_b, positions=positions, layers=layers, progress=progress)
        refusal, report = select_refusal_direction(cm, grid, val_h, val_b, fallback=fallback, progress=progress)
        del grid
        chosen = {"chosen": report.chosen, "fallback_used": report.settings.get("fallback_used"),
                  "report": report.to_dict()}
        if store is not None:
            refusal.save(store.out / "directions" / "refusal")
            chosen = store.put("selection", "report", chosen)
        seconds["selection"] = round(time.perf_counter() - t_select, 2)

    # the addition strength, calibrated on the harmless val split (never on the test split)
    val_scores = {float(c): point("calibration", f"{float(c)!r}", lambda c=c: float(refusal_scores(
        cm, val_b, interventions=[AddVector(refusal, float(c))], progress=False).mean())) for c in add_coeffs}
    passing = [c for c, v in val_scores.items() if v >= 0.0]
    c_add = min(passing) if passing else max(val_scores, key=val_scores.get)

    conditions = {
        "harmful_baseline": (test_h, [], "harmful: baseline"),
        "harmful_ablated": (test_h, [Ablate(refusal)], "harmful: ablated"),
        "harmless_baseline": (test_b, [], "harmless: baseline"),
        "harmless_added": (test_b, [AddVector(refusal, c_add)], f"harmless: refusal added (c={c_add:g})"),
    }
    runs = {name: point("generations", name, lambda p=p, i=i, d=d: judged(p, i, d))
            for name, (p, i, d) in conditions.items()}
    rates = {}
    for name, g in runs.items():
        labels = g["labels"]
        rates[name] = {lab: Rate(labels.count(lab), len(labels)).to_dict() for lab in ("refusal", "compliance", "degenerate")}
        rates[name]["first_token_score_mean"] = float(torch.tensor(g["first_scores"], dtype=torch.float32).mean())

    def kl_stats() -> dict:
        kl = kl_divergence_on(cm, list(test_b), [Ablate(refusal)], progress=False)
        return {"mean": float(kl.mean()), "median": float(kl.median())}

    def ortho_check() -> float:
        with torch.inference_mode():
            ortho = orthogonalize_weights(cm, refusal)
            hook = last_logits(cm, list(test_h[:8]), interventions=[Ablate(refusal)], progress=False)
            weights = last_logits(ortho, list(test_h[:8]), progress=False)
            del ortho
        return float((hook - weights).abs().max())

    kl = point("checks", "kl_ablation_harmless", kl_stats)
    ortho_diff = point("checks", "orthogonalization_max_logit_diff", ortho_check)
    results = {
        "model": cm.fingerprint(),
        "refusal_baseline": baseline,
        "refusal_direction": {"layer": refusal.layer, "position": refusal.position, "norm": refusal.norm,
                              "selection": chosen["chosen"],
                              "fallback_used": chosen["fallback_used"]},
        "rates": rates,
        "addition": {"coeff": c_add, "layer": refusal.layer, "val_mean_log_odds": {f"{c:g}": v for c, v in val_scores.items()},
                     "rule": "smallest c with mean first-token refusal log-odds >= 0 on harmless val, else the highest",
                     "threshold_met": bool(passing)},
        "kl_ablation_harmless": kl,
        "orthogonalization_max_logit_diff": ortho_diff,
        "sizes": {"train": [len(train_h), len(train_b)], "val": [len(val_h), len(val_b)],
                  "test": [len(test_h), len(test_b)]},
        "max_new_tokens": max_new_tokens,
        "judge": judge_record,
        "judge_details": the_judge.describe() if isinstance(the_judge, ModelJudge) else None,
        "examples": {name: [{"instruction": i, "reply": r, "label": l}
                            for i, r, l in list(zip(prompts, runs[name]["texts"], runs[name]["labels"]))[:4]]
                     for name, prompts in zip(runs, (test_h, test_h, test_b, test_b))},
        "selection_report": chosen["report"],
        "run_info": {"seconds": round(time.time() - t0, 1), "device": str(cm.device),
                     "dtype": str(cm.model.cfg.dtype).replace("torch.", ""),
                     "resumed": bool(store is not None and store.resumed), "step_seconds": seconds,
                     "tl_config": cm.tl_config, "decoding": cm.decoding_path},
    }
    if store is not None:
        write_json(store.out / "results.json", results)
    return results
