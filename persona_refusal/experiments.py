"""The persona-gating study: does a compliant persona gate refusal, and at which layers?

Context
-------
Zhong & Li (2026) report that steering a chat model toward a *compliant persona*
suppresses refusal (Llama-3.1-8B-Instruct: 97% → 2% of harmful prompts refused), and that
re-adding the refusal direction on top restores refusal when it is added at *late* layers
but not at *early* ones: refusal is computed early but *expressed* late, and the persona
gates the expression. :func:`run_gating_study` measures this on any chat model, at every
layer instead of two hand-picked ones:

1. **Directions.** The refusal direction (difference in means, harmful − harmless,
   selected as in Arditi et al.) and the compliant-persona direction at every layer
   (:mod:`persona_refusal.persona`). Both are rescaled to one common norm ``s`` (by
   default the refusal direction's own norm), so a strength means the same for both.
2. **Baseline vs persona**: replies to the evaluation harmful prompts without and with
   persona steering (``α·s·v̂`` added to ``resid_pre`` of the persona layer, every
   position), judged refusal / compliance / degenerate, with Wilson intervals; a dose–
   response sweep over ``α``, with coherence checked on harmless prompts.
3. **Gating sweep**: with persona steering on, the refusal direction ``β·s·r̂`` is re-added
   at *every* layer; the first-token refusal rate per layer, and the restoration
   ``(rate − persona rate) / (baseline rate − persona rate)`` with a paired bootstrap
   interval. The same sweep without persona steering is the control. Chosen cells
   (early, late, best) are confirmed by generation and judge.
4. **Cross-layer heatmap** (persona layer × re-add layer), **computed vs expressed**
   (projection onto each layer's refusal direction, baseline vs persona), **persona
   knockout** over windows of layers with a random-direction control, **activation
   patching** from the default run into the persona run per layer and position, and the
   **cosine** between persona and refusal directions against a random null.

Layers are ``resid_pre`` indices: "adding at block *b*'s output" in the paper is layer
``b + 1`` here. Sweeps use the first-token measures (one forward pass per point, starting
mid-model from cached residuals where the earlier layers are unchanged); generation
confirms chosen points. Every completed point is checkpointed in the output folder, so
an interrupted run resumes where it stopped and produces the same ``results.json``
(apart from ``run_info``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from persona_refusal import ops
from persona_refusal.activations import BatchPlan, plan_batches, run_plan
from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
from persona_refusal.extraction import extract_directions
from persona_refusal.selection import select_refusal_direction
from persona_refusal.errors import ConfigError, RunFolderError
from persona_refusal.evaluation import Rate, generate_conditions, judge_responses
from persona_refusal.interventions import Ablate, AddVector, Intervention, Patch
from persona_refusal.models import ChatModel
from persona_refusal.persona import PersonaRollouts, Rollout, persona_direction, persona_rollouts
from persona_refusal.prompts import PromptSet, bundled, load_prompts
from persona_refusal.results import GatingResults
from persona_refusal.storage import canonical_json, read_json, read_tensors, write_json, write_tensors

__all__ = ["GatingConfig", "GatingStudy", "run_gating_study", "RESULTS_SCHEMA", "load_results"]

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "persona_refusal.gating/1"

MAX_STRENGTH = 100.0
"""Largest steering strength (persona ``α``, re-add ``β``) accepted, in units of the common
norm ``s``: the paper uses 2–3; far beyond 100 an added vector swamps the residual stream,
and a strength such as 1e30 overflows float32."""


# ============================================================================ config
@dataclass
class GatingConfig:
    """Everything that defines a gating study. Layers are ``resid_pre`` indices.

    ``None`` for a layer list means the default derived from the model's depth (see
    :meth:`resolve`). Defaults are sized to finish on a 2-core laptop CPU with the demo
    model; ``GatingConfig.preset("full")`` sweeps finer grids.
    """

    model: str = "demo"
    """Model to load (see :func:`persona_refusal.load_chat_model`)."""
    train_harmful: str | None = None
    """Harmful prompts for the refusal direction (path; default: bundled train split)."""
    train_harmless: str | None = None
    """Harmless prompts for the refusal direction (default: bundled train split)."""
    val_harmful: str | None = None
    """Harmful prompts for selecting the refusal direction (default: bundled val split)."""
    val_harmless: str | None = None
    """Harmless prompts for selecting the refusal direction (default: bundled val split)."""
    eval_harmful: str | None = None
    """Evaluation harmful prompts (default: bundled test split)."""
    eval_harmless: str | None = None
    """Evaluation harmless prompts, for coherence checks (default: bundled test split)."""
    n_train: int | None = 96
    """Training prompts per side (``None``: all)."""
    n_val: int | None = 24
    """Selection prompts per side (``None``: all)."""
    n_eval: int | None = None
    """Evaluation harmful prompts for the generated baseline/persona rates (``None``: all)."""
    n_sweep: int = 32
    """First ``n`` evaluation harmful prompts used by the first-token sweeps."""
    n_coherence: int = 12
    """First ``n`` evaluation harmless prompts used for coherence checks."""
    selection_positions: list[int] = field(default_factory=lambda: [-1])
    """Positions (from the end) whose candidates compete in selection (the study reads
    the last prompt token, as the paper does)."""
    selection_layers: list[int] | str | None = None
    """Candidate layers for selection (default ``"every:3,below:0.8"``: every 3rd layer
    below 0.8·n_layers). Layer lists also take the strings ``"all"``, ``"every:N"``,
    ``"from:N"`` and ``"below:F"`` (comma-combined)."""
    refusal_direction: str | None = None
    """A saved :class:`Direction` to use as the refusal direction instead of selecting one
    (the diff-in-means grid is still computed, for per-layer analyses)."""
    persona_direction: str | None = None
    """Saved :class:`LayerDirections` to use as persona directions instead of rollouts."""
    allow_transfer: bool = False
    """Accept saved directions made with another model of the same width, on purpose."""
    kl_threshold: float = 0.1
    """Selection: largest KL (nats) that ablation may cause on harmless val prompts."""
    induce_threshold: float = 0.0
    """Selection: smallest mean refusal score that addition must induce on harmless val."""
    selection_fallback: str | None = "relative"
    """When no candidate passes Arditi et al.'s filters: ``"relative"`` requires only that
    addition raises the harmless refusal score above the unedited one (small models rarely
    put half their probability on a refusal token); ``None`` stops the run."""
    persona_layer: int | None = None
    """Layer where persona steering is added (default: round(0.65·n_layers))."""
    persona_alpha: float = 3.0
    """Persona steering strength, in units of the common norm (the paper: 3)."""
    alphas: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0])
    """Persona strengths of the dose–response sweep."""
    betas: list[float] = field(default_factory=lambda: [2.0])
    """Refusal re-add strengths of the gating sweep (the paper: 2)."""
    control_betas: list[float] = field(default_factory=lambda: [2.0])
    """Re-add strengths of the control sweep without persona steering."""
    gating_layers: list[int] | str | None = None
    """Layers of the gating sweep (default: every layer)."""
    control_layers: list[int] | str | None = None
    """Layers of the control sweep without persona steering (default ``"every:2"``)."""
    heatmap_persona_layers: list[int] | None = None
    """Persona layers of the heatmap (default: round(f·n_layers), f = 0.4, 0.65, 0.85)."""
    heatmap_refusal_layers: list[int] | str | None = None
    """Re-add layers of the heatmap (default: every 4th layer)."""
    knockout_window: int | None = None
    """Width of a knockout window (default: max(2, n_layers // 8))."""
    knockout_starts: list[int] | None = None
    """First layers of the knockout windows (default: tiling the model)."""
    patch_layers: list[int] | str | None = None
    """Layers of activation patching (default: persona layer to the last layer)."""
    patch_position_layers: list[int] | None = None
    """Layers where each post-instruction position is patched alone (default: 3 layers
    from the persona layer on)."""
    norm: str = "persona"
    """Common steering norm ``s``: ``"persona"`` (the persona direction's norm at the
    persona layer: α = 3 means three times the compliant − refuser difference where it is
    added), ``"refusal"`` (the refusal direction's norm at its own layer) or ``"mean"``."""
    persona_questions: int | None = 8
    """Probe questions per persona system prompt (``None``: all 16)."""
    persona_max_new_tokens: int = 24
    """Reply length of persona rollouts."""
    persona_filter: str = "judge"
    """``"judge"``: in-character rollouts only; ``"none"``: all (tiny models)."""
    persona_method: str = "last_token"
    """``"last_token"`` or ``"response_avg"``."""
    max_new_tokens: int = 32
    """Reply length of judged generations."""
    bootstrap: int = 2000
    """Bootstrap resamples for restoration intervals."""
    seed: int = 0
    """Seed of every random draw (bootstrap, random control directions)."""
    batch_size: int | None = None
    """Prompts per forward batch (default: by token budget)."""

    PRESETS = {
        "default": {},
        "full": {"n_train": None, "n_val": None, "n_sweep": 64, "n_coherence": 24, "selection_layers": "below:0.8",
                 "betas": [1.0, 2.0, 4.0], "control_betas": [1.0, 2.0], "persona_questions": None,
                 "heatmap_refusal_layers": "every:2", "max_new_tokens": 64,
                 "control_layers": "all", "alphas": [0.5, 1.0, 2.0, 3.0, 4.0, 6.0]},
        "smoke": {"n_train": 16, "n_val": 8, "n_eval": 12, "n_sweep": 8, "n_coherence": 4, "alphas": [1.0, 3.0],
                  "betas": [2.0], "control_betas": [2.0], "persona_questions": 3, "persona_max_new_tokens": 8,
                  "persona_filter": "none", "max_new_tokens": 8, "bootstrap": 200,
                  "kl_threshold": 1e9, "induce_threshold": -1e9},
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GatingConfig":
        """A named preset (``default``, ``full``, ``smoke``) with overrides."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown preset {name!r}", hint=f"use one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        for name in ("n_sweep", "n_coherence", "persona_max_new_tokens", "max_new_tokens", "bootstrap",
                     "n_train", "n_val", "n_eval", "persona_questions", "batch_size"):
            v = getattr(self, name)
            if v is None and name in ("n_train", "n_val", "n_eval", "persona_questions", "batch_size"):
                continue
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an integer, got {v!r}", hint="use a whole number")
            if v < 1:
                raise ConfigError(f"{name} must be at least 1, got {v}")
        for name in ("alphas", "betas", "control_betas"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"{name} must be a list of strengths, got {getattr(self, name)!r}",
                                  hint="write it as a list, e.g. [1.0, 2.0]")
            for v in getattr(self, name):
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{name} holds a non-finite strength {v!r}", hint="use finite numbers")
                if abs(v) > MAX_STRENGTH:
                    raise ConfigError(f"{name} holds the strength {v!r}, out of range",
                                      hint=f"use strengths between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}")
        if not isinstance(self.persona_alpha, numbers.Real) or not math.isfinite(self.persona_alpha):
            raise ConfigError(f"persona_alpha must be finite, got {self.persona_alpha}", hint="use a finite number")
        if abs(self.persona_alpha) > MAX_STRENGTH:
            raise ConfigError(f"persona_alpha {self.persona_alpha!r} is out of range",
                              hint=f"use a strength between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}")
        if not self.betas:
            raise ConfigError("betas must hold at least one strength")
        if self.norm not in ("refusal", "persona", "mean"):
            raise ConfigError(f"unknown norm {self.norm!r}", hint="use refusal, persona or mean")
        if self.persona_filter not in ("judge", "none"):
            raise ConfigError(f"unknown persona_filter {self.persona_filter!r}", hint="use judge or none")
        if self.persona_method not in ("last_token", "response_avg"):
            raise ConfigError(f"unknown persona_method {self.persona_method!r}")

    def to_dict(self) -> dict:
        """JSON-able form (resolved layer lists are added by the study)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "GatingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**d)

    def resolve(self, n_layers: int) -> dict:
        """Concrete layer lists for a model with ``n_layers`` blocks, validated."""
        L = n_layers

        def check(name: str, layers: Sequence[int], top: int) -> list[int]:
            out = sorted({int(l) for l in layers})
            bad = [l for l in out if not 0 <= l <= top]
            if bad:
                raise ConfigError(f"{name} {bad} out of range: this model has layers 0..{top}")
            if not out:
                raise ConfigError(f"{name} is empty")
            return out

        pl = self.persona_layer if self.persona_layer is not None else round(0.65 * L)
        if not 1 <= pl <= L - 1:
            raise ConfigError(f"persona_layer {pl} out of range: use 1..{L - 1}")
        sel = _layer_spec("selection_layers", self.selection_layers, L, "every:3,below:0.8")
        gl = _layer_spec("gating_layers", self.gating_layers, L, "all")
        cl = _layer_spec("control_layers", self.control_layers, L, "every:2")
        hp = self.heatmap_persona_layers or sorted({min(L - 1, max(1, round(f * L))) for f in (0.4, 0.65, 0.85)})
        hp = _layer_spec("heatmap_persona_layers", hp, L, "all")
        hr = _layer_spec("heatmap_refusal_layers", self.heatmap_refusal_layers, L, "every:4")
        w = self.knockout_window or max(2, L // 6)
        if not 1 <= w <= L:
            raise ConfigError(f"knockout_window {w} out of range 1..{L}")
        ks = self.knockout_starts if self.knockout_starts is not None else list(range(0, L - w + 1, w))
        ks = check("knockout_starts", ks, L - w)
        patch = _layer_spec("patch_layers", self.patch_layers, L, f"from:{pl}")
        ppl = self.patch_position_layers if self.patch_position_layers is not None else [
            l for l in sorted({pl, pl + max(1, L // 8), pl + 2 * max(1, L // 8)}) if l < L]
        for p in self.selection_positions:
            if not isinstance(p, int) or p >= 0:
                raise ConfigError(f"selection positions count from the end and must be negative, got {p}")
        return {
            "persona_layer": pl,
            "selection_layers": check("selection_layers", sel, L - 1),
            "gating_layers": check("gating_layers", gl, L - 1),
            "control_layers": check("control_layers", cl, L - 1),
            "heatmap_persona_layers": check("heatmap_persona_layers", hp, L - 1),
            "heatmap_refusal_layers": check("heatmap_refusal_layers", hr, L - 1),
            "knockout_window": w,
            "knockout_starts": ks,
            "patch_layers": check("patch_layers", patch, L - 1),
            "patch_position_layers": check("patch_position_layers", ppl, L - 1) if ppl else [],
        }


def _layer_spec(name: str, spec, n_layers: int, default: str) -> list[int]:
    """Resolve a layer list or a spec string (``all``, ``every:N``, ``from:N``, ``below:F``)."""
    if spec is None:
        spec = default
    if not isinstance(spec, str):
        return [int(l) for l in spec]
    layers = list(range(n_layers))
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kind, _, arg = part.partition(":")
        try:
            if kind == "all":
                continue
            if kind == "every":
                layers = [l for l in layers if l % int(arg) == 0]
            elif kind == "from":
                layers = [l for l in layers if l >= int(arg)]
            elif kind == "below":
                layers = [l for l in layers if l < float(arg) * n_layers]
            else:
                raise ValueError(kind)
        except ValueError:
            raise ConfigError(f"{name}: cannot read layer spec {part!r}", hint="use all, every:N, from:N or below:F") from None
    return layers


# ============================================================================ statistics
def first_token_stats(refused: Sequence[bool], scores: Sequence[float]) -> dict:
    """Rate of greedy first tokens that open a refusal, with Wilson CI, and the mean
    first-token refusal log-odds with a normal 95% interval."""
    n = len(refused)
    k = int(sum(bool(x) for x in refused))
    lo, hi = ops.wilson_interval(k, n)
    s = torch.tensor(list(scores), dtype=torch.float64)
    mean = float(s.mean())
    half = float(1.959963984540054 * s.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"refusal_rate": k / n, "k": k, "n": n, "ci": [lo, hi], "score_mean": mean,
            "score_ci": [mean - half, mean + half]}


def outcome_rates(labels: Sequence[str]) -> dict:
    """Refusal / compliance / degenerate rates with Wilson intervals."""
    n = len(labels)
    return {lab: Rate(sum(l == lab for l in labels), n).to_dict() for lab in ("refusal", "compliance", "degenerate")}


def restoration(cond: Sequence[float | bool], base: Sequence[float | bool], persona: Sequence[float | bool], *,
                n_boot: int, seed: int) -> tuple[float | None, list[float | None]]:
    """``(mean(cond) − mean(persona)) / (mean(base) − mean(persona))`` with a paired
    percentile bootstrap 95% interval over prompts (``None`` when the baseline and
    persona means are equal)."""
    c, b, p = (torch.tensor([float(x) for x in v], dtype=torch.float64) for v in (cond, base, persona))
    denom = float(b.mean() - p.mean())
    point = None if abs(denom) < 1e-12 else float((c.mean() - p.mean()) / denom)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(c), (n_boot, len(c)), generator=g)
    num = c[idx].mean(1) - p[idx].mean(1)
    den = b[idx].mean(1) - p[idx].mean(1)
    ok = den.abs() > 1e-12
    if point is None or int(ok.sum()) < n_boot // 2:
        return point, [None, None]
    vals = (num[ok] / den[ok]).sort().values
    lo = float(vals[int(0.025 * (len(vals) - 1))])
    hi = float(vals[int(math.ceil(0.975 * (len(vals) - 1)))])
    return point, [lo, hi]


def _mean_ci(x: torch.Tensor) -> dict:
    n = x.shape[0]
    mean = float(x.mean())
    half = float(1.959963984540054 * x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(n)}


# ============================================================================ run folder
class RunStore:
    """The output folder: configuration, per-point checkpoints and tensors, all atomic."""

    def __init__(self, out: str | os.PathLike, config: dict, *, force: bool = False) -> None:
        self.out = Path(out)
        self.ckpt = self.out / "checkpoints"
        cfg_path = self.out / "config.json"
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"{self.out} exists and is not a folder", hint="give --out a folder path")
        self.resumed = False
        if cfg_path.is_file():
            try:
                old = read_json(cfg_path)
            except ValueError:
                old = None
            if old != config:
                if not force:
                    changed = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
                    raise RunFolderError(
                        f"{self.out} holds a run with a different configuration (changed: {', '.join(changed[:6])})",
                        hint="use another --out folder, or --force to start over there",
                    )
                self._clear()
            else:
                self.resumed = self.ckpt.is_dir() and any(self.ckpt.iterdir())
        elif force:
            self._clear()
        self.ckpt.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, config)
        self._cache: dict[str, dict] = {}

    def _clear(self) -> None:
        import shutil

        for name in ("checkpoints", "results.json", "directions"):
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _stage(self, stage: str) -> dict:
        if stage not in self._cache:
            p = self.ckpt / f"{stage}.json"
            self._cache[stage] = read_json(p) if p.is_file() else {}
        return self._cache[stage]

    def has(self, stage: str, key: str) -> bool:
        return key in self._stage(stage)

    def get(self, stage: str, key: str) -> Any:
        return self._stage(stage)[key]

    def put(self, stage: str, key: str, value: Any) -> Any:
        return self.put_many(stage, {key: value})[key]

    def put_many(self, stage: str, items: dict[str, Any]) -> dict:
        """Checkpoint several points in one atomic write: after a crash, all or none are saved.

        Values are kept as they read back from the file (canonical JSON: non-finite
        floats become ``None``), so a fresh and a resumed run see the same values; the
        in-memory copy changes only once the file is written.
        """
        data = {**self._stage(stage), **json.loads(canonical_json(items))}
        write_json(self.ckpt / f"{stage}.json", data)
        self._cache[stage] = data
        return data

    def point(self, stage: str, key: str, compute: Callable[[], Any]) -> Any:
        """The checkpointed value of one point, computing and saving it if missing.

        The value is always returned as it reads back from JSON, so a resumed run sees
        exactly what a fresh run saw.
        """
        if self.has(stage, key):
            return self.get(stage, key)
        return self.put(stage, key, compute())

    def count(self, stage: str) -> int:
        return len(self._stage(stage))


# ============================================================================ the study
class GatingStudy:
    """Runs the study stage by stage; see the module docstring.

    Use :func:`run_gating_study`; this class exposes the stages for notebooks.
    """

    def __init__(self, chat_model: ChatModel, config: GatingConfig, out: str | os.PathLike, *,
                 force: bool = False, progress: bool = True, judge=None,
                 prompts: dict[str, PromptSet] | None = None) -> None:
        self.cm = chat_model
        self.cfg = config
        self.layers = config.resolve(chat_model.n_layers)
        self.progress = progress
        self.judge = judge
        self.prompts = prompts if prompts is not None else study_prompts(config)  # already read: by the CLI
        self.config_record = {
            "config": config.to_dict(),
            "inputs": _input_hashes(config),
            "resolved": self.layers,
            "model": chat_model.fingerprint(),
            "prompt_sets": {k: v.describe() for k, v in self.prompts.items()},
            "judge": type(judge).__name__ if judge is not None else "SubstringJudge",
        }
        self._check_inputs()
        self.store = RunStore(out, self.config_record, force=force)
        self.out = self.store.out
        self.timings: dict[str, float] = {}
        self.stage_name = "setup"
        self._caches: dict[str, dict[int, list[torch.Tensor]]] = {}
        self._outcomes: dict[str, tuple[list[bool], list[float]]] = {}

    # ---------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def stage(self, name: str):
        self.stage_name = name
        t0 = time.perf_counter()
        log.info("stage %s", name)
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def _check_inputs(self) -> None:
        """Fail before anything is written: selection positions, prompt lengths, given directions."""
        cm, c = self.cm, self.cfg
        allowed = cm.post_instruction_positions
        bad = [p for p in c.selection_positions if p not in allowed]
        if bad:
            raise ConfigError(f"selection position {bad[0]} is out of range: this model's post-instruction positions "
                              f"are {allowed[0]}..{allowed[-1]}", hint=f"use positions between {allowed[0]} and -1")
        for key, ps in self.prompts.items():
            texts = list(ps)[: c.n_coherence] if key == "eval_harmless" else list(ps)
            reserve = c.max_new_tokens if key.startswith("eval") else 0
            ids = cm.tokenizer(cm.format(texts), add_special_tokens=False)["input_ids"]
            for i, x in enumerate(ids):
                if len(x) + reserve > cm.n_ctx:
                    raise ConfigError(
                        f"prompt {i + 1} of {ps.source or ps.name} ({key}) is {len(x)} tokens"
                        f"{f' (+{reserve} to generate)' if reserve else ''}, longer than the context window of "
                        f"{cm.n_ctx} tokens", hint="shorten or remove it" + (", or lower --max-new-tokens" if reserve else ""))
        if c.refusal_direction:
            given = Direction.load(c.refusal_direction, chat_model=cm, allow_transfer=c.allow_transfer)
            cm.check_layer(given.layer, what="the given refusal direction's layer")
        if c.persona_direction:
            given_p = LayerDirections.load(c.persona_direction, chat_model=cm, allow_transfer=c.allow_transfer)
            _check_persona_layers(given_p, cm.n_layers)

    @property
    def sweep_prompts(self) -> list[str]:
        return list(self.prompts["eval_harmful"])[: self.cfg.n_sweep]

    @property
    def coherence_prompts(self) -> list[str]:
        return list(self.prompts["eval_harmless"])[: self.cfg.n_coherence]

    # ---------------------------------------------------------------- directions
    def refusal(self) -> tuple[DirectionGrid, Direction, dict]:
        """Stage: diff-in-means grid on the train sets, then selection on the val sets."""
        d_dir = self.out / "directions"
        grid_path, dir_path = d_dir / "refusal_grid", d_dir / "refusal"
        if not (d_dir / "refusal_grid.json").is_file():
            with self.stage("refusal_grid"):
                grid = extract_directions(self.cm, self.prompts["train_harmful"], self.prompts["train_harmless"],
                                          batch_size=self.cfg.batch_size, progress=self.progress)
                grid.save(grid_path)
        grid = DirectionGrid.load(grid_path, chat_model=self.cm)
        if self.cfg.refusal_direction and not (d_dir / "refusal.json").is_file():
            given = Direction.load(self.cfg.refusal_direction, chat_model=self.cm, allow_transfer=self.cfg.allow_transfer)
            self.cm.check_layer(given.layer, what="the given refusal direction's layer")
            write_json(d_dir / "refusal_selection.json", {"chosen": None, "source": str(self.cfg.refusal_direction),
                                                          "candidates": [], "settings": {"given": True}})
            given.save(dir_path)
        if not (d_dir / "refusal.json").is_file():
            with self.stage("refusal_selection"):
                sub = DirectionGrid(
                    positive_mean=grid.positive_mean[[grid.positions.index(p) for p in self.cfg.selection_positions]],
                    negative_mean=grid.negative_mean[[grid.positions.index(p) for p in self.cfg.selection_positions]],
                    positions=tuple(self.cfg.selection_positions), layers=grid.layers, name="refusal",
                    model_id=grid.model_id, model_checksum=grid.model_checksum, n_positive=grid.n_positive,
                    n_negative=grid.n_negative, provenance=grid.provenance)
                sub = _restrict_layers(sub, self.layers["selection_layers"])
                try:
                    direction, report = select_refusal_direction(
                        self.cm, sub, self.prompts["val_harmful"], self.prompts["val_harmless"],
                        kl_threshold=self.cfg.kl_threshold, induce_threshold=self.cfg.induce_threshold,
                        fallback=self.cfg.selection_fallback, batch_size=self.cfg.batch_size, progress=self.progress)
                except ConfigError as e:
                    if getattr(e, "report", None) is not None:
                        write_json(d_dir / "refusal_selection_failed.json", e.report.to_dict())
                    raise
                write_json(d_dir / "refusal_selection.json", report.to_dict())
                direction.save(dir_path)
        direction = Direction.load(dir_path, chat_model=self.cm, allow_transfer=self.cfg.allow_transfer)
        return grid, direction, read_json(d_dir / "refusal_selection.json")

    def persona(self) -> tuple[LayerDirections, dict, list[dict]]:
        """Stage: persona rollouts, filter, diff-in-means at every layer."""
        d_dir = self.out / "directions"
        path = d_dir / "persona"
        if self.cfg.persona_direction and not (d_dir / "persona.json").is_file():
            given = LayerDirections.load(self.cfg.persona_direction, chat_model=self.cm,
                                         allow_transfer=self.cfg.allow_transfer)
            _check_persona_layers(given, self.cm.n_layers)
            write_json(d_dir / "persona_rollouts.json", {"summary": {"source": str(self.cfg.persona_direction)},
                                                         "rollouts": []})
            given.save(path)
        if not (d_dir / "persona.json").is_file():
            with self.stage("persona"):
                ro = persona_rollouts(self.cm, n_questions=self.cfg.persona_questions,
                                      max_new_tokens=self.cfg.persona_max_new_tokens, filter=self.cfg.persona_filter,
                                      judge=self.judge, batch_size=self.cfg.batch_size, progress=self.progress)
                dirs = persona_direction(self.cm, ro, method=self.cfg.persona_method, progress=self.progress)
                write_json(d_dir / "persona_rollouts.json",
                           {"summary": ro.summary(), "rollouts": [r.to_dict() for r in ro.rollouts]})
                dirs.save(path)
        dirs = LayerDirections.load(path, chat_model=self.cm, allow_transfer=self.cfg.allow_transfer)
        rec = read_json(d_dir / "persona_rollouts.json")
        return dirs, rec["summary"], rec["rollouts"]

    # ---------------------------------------------------------------- sweep machinery
    def _plan(self, prompts: Sequence[str]) -> BatchPlan:
        return plan_batches(self.cm, self.cm.format(list(prompts)), batch_size=self.cfg.batch_size,
                            keep_last=len(self.cm.post_instruction_positions))

    def _cache_run(self, name: str, plan: BatchPlan, interventions: Sequence[Intervention], layers: Sequence[int],
                   start: int | None = None, base: str | None = None, desc: str | None = None) -> None:
        """Run once, keeping full per-row residuals at ``layers`` and first-token outcomes."""
        names = {self.cm.hook_name(l): None for l in layers}
        caches: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
        refused = torch.zeros(plan.n_prompts, dtype=torch.bool)
        scores = torch.zeros(plan.n_prompts, dtype=torch.float64)
        kw = {}
        if start is not None:
            kw = {"start_layer": start, "start_resid": self._caches[base][start]}
        for o in run_plan(self.cm, plan, interventions=interventions, capture=names, logits=True, desc=desc,
                          progress=self.progress, **kw):
            for l in layers:
                caches[l].append(o.captured[self.cm.hook_name(l)])
            r, s = self._first_token(o.last_logits)
            refused[o.batch.rows], scores[o.batch.rows] = r, s
        self._caches[name] = caches
        self._outcomes[name] = (refused.tolist(), scores.tolist())

    def _first_token(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = list(self.cm.refusal_token_ids)
        return torch.isin(logits.argmax(-1), torch.tensor(ids)), ops.refusal_log_odds(logits, ids)

    def _score(self, plan: BatchPlan, interventions: Sequence[Intervention], start: int, base: str,
               desc: str | None = None) -> dict:
        """First-token outcomes per prompt of one condition, resuming at ``start`` from ``base``."""
        refused = torch.zeros(plan.n_prompts, dtype=torch.bool)
        scores = torch.zeros(plan.n_prompts, dtype=torch.float64)
        kw = {} if start == 0 else {"start_layer": start, "start_resid": self._caches[base][start]}
        for o in run_plan(self.cm, plan, interventions=interventions, logits=True, progress=False, **kw):
            r, s = self._first_token(o.last_logits)
            refused[o.batch.rows], scores[o.batch.rows] = r, s
        return {"refused": refused.tolist(), "scores": scores.tolist()}

    def _judged_many(self, stage: str, prompts: Sequence[str], conditions: dict[str, Sequence[Intervention]],
                     desc: str) -> dict[str, dict]:
        """Generate and judge under several conditions in shared batches; checkpoint each."""
        missing = {k: v for k, v in conditions.items() if not self.store.has(stage, k)}
        if missing:
            gens = generate_conditions(self.cm, list(prompts), list(missing.values()),
                                       max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size,
                                       desc=desc, progress=self.progress)
            done = {}
            for key, gen in zip(missing, gens):
                labels = judge_responses(prompts, gen.texts, self.judge)
                refused = gen.first_token_refusals(self.cm.refusal_token_ids).tolist()
                done[key] = {"labels": labels, "replies": gen.texts, "refused": refused,
                             "scores": gen.first_scores.tolist()}
            # one write: a resumed run never regenerates a subset in other batches (other floats)
            self.store.put_many(stage, done)
        return {k: self.store.get(stage, k) for k in conditions}

    # ---------------------------------------------------------------- main
    def run(self) -> dict:
        cfg, cm, L = self.cfg, self.cm, self.cm.n_layers
        P = self.layers["persona_layer"]
        t_start = time.time()
        grid, refusal, selection = self.refusal()
        persona_dirs, rollout_summary, _ = self.persona()
        refusal_layers = grid.layer_directions(-1)
        p_at = persona_dirs.at(P)
        s = {"refusal": refusal.norm, "persona": p_at.norm, "mean": 0.5 * (refusal.norm + p_at.norm)}[cfg.norm]
        r_unit = refusal.rescaled(s)
        persona_vec = p_at.rescaled(s)

        def steer(alpha: float = cfg.persona_alpha, layer: int = P) -> AddVector:
            return AddVector(persona_vec, alpha, layer=layer, allow_transfer=cfg.allow_transfer)

        def readd(beta: float, layer: int) -> AddVector:
            return AddVector(r_unit, beta, layer=layer, allow_transfer=cfg.allow_transfer)

        st = self.store
        # -- baseline vs persona on the evaluation set (generation + judge)
        with self.stage("eval_generation"):
            ev = list(self.prompts["eval_harmful"])
            gens = self._judged_many("eval", ev, {"baseline": [], "persona": [steer()]}, "eval: baseline + persona")
            base_gen, pers_gen = gens["baseline"], gens["persona"]

        # -- caches on the sweep subset
        with self.stage("sweep_caches"):
            plan = self._plan(self.sweep_prompts)
            self._cache_run("baseline", plan, [], range(L), desc="cache: baseline")
            self._cache_run("persona", plan, [steer()], range(P, L), start=P, base="baseline", desc="cache: persona")
            for l in range(P):
                self._caches["persona"][l] = self._caches["baseline"][l]
            hplan = self._plan(self.coherence_prompts)
            harmless_last = torch.zeros(hplan.n_prompts, L, cm.d_model)
            for o in run_plan(cm, hplan, capture={cm.hook_name(l): [-1] for l in range(L)}, stop_at_layer=L,
                              progress=False):
                for l in range(L):
                    harmless_last[o.batch.rows, l] = o.captured[cm.hook_name(l)][:, 0]
        b_ref, b_sc = self._outcomes["baseline"]
        p_ref, p_sc = self._outcomes["persona"]

        def summarise(point: dict, with_restoration: bool = True) -> dict:
            out = first_token_stats(point["refused"], point["scores"])
            if with_restoration:
                rest, rest_ci = restoration(point["refused"], b_ref, p_ref, n_boot=cfg.bootstrap, seed=cfg.seed)
                out["restoration"], out["restoration_ci"] = rest, rest_ci
                srest, srest_ci = restoration(point["scores"], b_sc, p_sc, n_boot=cfg.bootstrap, seed=cfg.seed)
                out["score_restoration"], out["score_restoration_ci"] = srest, srest_ci
            return out

        # -- dose-response
        alpha_rows = []
        with self.stage("alpha_sweep"):
            coh = self._judged_many("coherence", self.coherence_prompts,
                                    {"0": [], **{f"{a}": [steer(a)] for a in cfg.alphas}}, "coherence (all α)")
            for a in cfg.alphas:
                pt = st.point("alpha", f"{a}", lambda a=a: self._score(plan, [steer(a)], P, "baseline"))
                alpha_rows.append({"alpha": a, **summarise(pt, False), "coherence": outcome_rates(coh[f"{a}"]["labels"])})
            coh0 = coh["0"]

        # -- gating sweep (persona on) and control (persona off)
        gating, control = [], []
        with self.stage("gating"):
            from tqdm.auto import tqdm

            points = [(b, l) for b in cfg.betas for l in self.layers["gating_layers"]]
            for b, l in tqdm(points, desc="gating sweep", disable=not self.progress, leave=False):
                base_name = "baseline" if l <= P else "persona"
                pt = st.point("gating", f"{b}@{l}", lambda b=b, l=l, base_name=base_name:
                              self._score(plan, [steer(), readd(b, l)], l, base_name))
                rec = summarise(pt)
                gating.append({"layer": l, "beta": b, "refusal_rate": rec["refusal_rate"], "ci": rec["ci"],
                               "restoration": rec["restoration"], **{k: v for k, v in rec.items() if k not in (
                                   "refusal_rate", "ci", "restoration")}})
            points = [(b, l) for b in cfg.control_betas for l in self.layers["control_layers"]]
            for b, l in tqdm(points, desc="control sweep", disable=not self.progress, leave=False):
                pt = st.point("control", f"{b}@{l}", lambda b=b, l=l: self._score(plan, [readd(b, l)], l, "baseline"))
                rec = summarise(pt, False)
                control.append({"layer": l, "beta": b, **rec})

        # -- confirm chosen cells by generation
        with self.stage("confirm"):
            beta_c = max(cfg.betas)
            early = refusal.layer if refusal.layer < P else max(0, P - 2)
            late = min(L - 1, P + 2)
            rows = [g for g in gating if g["beta"] == beta_c]
            cells = {"early": early, "late": late}
            if rows:  # the re-add layer with the highest mean refusal log-odds (continuous, never tied at 0)
                best = max(rows, key=lambda g: (g["score_mean"], -g["layer"]))["layer"]
                if best not in cells.values():
                    cells["best"] = best
            conds = {f"{name}:{beta_c}@{l}": [steer(), readd(beta_c, l)] for name, l in cells.items()}
            conds.update({"sweep_baseline": [], "sweep_persona": [steer()]})
            gens = self._judged_many("confirm", self.sweep_prompts, conds, "confirm chosen cells")
            confirm = []
            for name, l in cells.items():
                g = gens[f"{name}:{beta_c}@{l}"]
                confirm.append({"cell": name, "layer": l, "beta": beta_c, **outcome_rates(g["labels"]),
                                "first_token": first_token_stats(g["refused"], g["scores"])})
            sweep_gen = {name: outcome_rates(gens[f"sweep_{name}"]["labels"]) for name in ("baseline", "persona")}

        # -- heatmap persona layer x re-add layer
        with self.stage("heatmap"):
            hp, hr = self.layers["heatmap_persona_layers"], self.layers["heatmap_refusal_layers"]
            beta_h = max(cfg.betas)
            rate = [[None] * len(hr) for _ in hp]
            score = [[None] * len(hr) for _ in hp]
            for i, pl in enumerate(hp):
                todo = [l for l in hr if not st.has("heatmap", f"{pl}x{l}")
                        and not (pl == P and st.has("gating", f"{beta_h}@{l}"))]
                if any(l > pl for l in todo):
                    name = f"persona@{pl}"
                    if name not in self._caches:
                        self._cache_run(name, plan, [steer(layer=pl)], [l for l in hr if l > pl], start=pl,
                                        base="baseline", desc=f"cache: persona at {pl}")
                for j, l in enumerate(hr):
                    base_name = "baseline" if l <= pl else f"persona@{pl}"
                    if pl == P and st.has("gating", f"{beta_h}@{l}"):  # the same point as the gating sweep's
                        pt = st.get("gating", f"{beta_h}@{l}")
                    else:
                        pt = st.point("heatmap", f"{pl}x{l}", lambda pl=pl, l=l, base_name=base_name: self._score(
                            plan, [steer(layer=pl), readd(beta_h, l)], l, base_name))
                    sm = first_token_stats(pt["refused"], pt["scores"])
                    rate[i][j], score[i][j] = sm["refusal_rate"], sm["score_mean"]
                self._caches.pop(f"persona@{pl}", None)
            persona_only = []
            for pl in hp:
                if pl == P:  # persona alone at the main layer: the sweep's persona run
                    persona_only.append(first_token_stats(p_ref, p_sc))
                    continue
                pt = st.point("heatmap", f"{pl}xnone", lambda pl=pl: self._score(plan, [steer(layer=pl)], pl, "baseline"))
                persona_only.append(first_token_stats(pt["refused"], pt["scores"]))
            heatmap = {"persona_layers": hp, "refusal_layers": hr, "beta": beta_h, "refusal_rate": rate,
                       "score_mean": score, "persona_only": persona_only}

        # -- knockout
        with self.stage("knockout"):
            w = self.layers["knockout_window"]
            rand = LayerDirections(vectors=ops.random_unit_vectors(L, cm.d_model, seed=cfg.seed), layers=tuple(range(L)),
                                   name="random", model_id=cm.model_id, model_checksum=cm.checksum)
            knockout = []
            for kind, dirs in (("persona", persona_dirs), ("random", rand)):
                for a in self.layers["knockout_starts"]:
                    window = list(range(a, a + w))
                    base_name = "baseline" if a <= P else "persona"
                    pt = st.point("knockout", f"{kind}:{a}-{a + w}", lambda dirs=dirs, window=window, a=a,
                                  base_name=base_name: self._score(
                        plan, [steer(), Ablate(dirs, layers=window, sites=("resid_pre",),
                                               allow_transfer=cfg.allow_transfer)], a, base_name))
                    knockout.append({"direction": kind, "start": a, "end": a + w, **summarise(pt)})

        # -- activation patching: default run -> persona run
        with self.stage("patching"):
            post = cm.post_instruction_positions
            patching = []
            specs = [(l, tuple(post)) for l in self.layers["patch_layers"]]
            specs += [(l, (p,)) for l in self.layers["patch_position_layers"] for p in post]
            for l, pos in specs:
                key = f"{l}:{','.join(map(str, pos))}"

                def compute(l=l, pos=pos):
                    idx = [plan_pos for plan_pos in pos]
                    src = torch.zeros(plan.n_prompts, len(idx), cm.d_model)
                    for k, batch in enumerate(plan.batches):
                        src[batch.rows] = self._caches["baseline"][l][k][:, idx]
                    base_name = "baseline" if l <= P else "persona"
                    return self._score(plan, [steer(), Patch(cm.hook_name(l), src, idx)], l, base_name)

                pt = st.point("patching", key, compute)
                rec = summarise(pt)
                patching.append({"layer": l, "positions": list(pos), **rec})

        # -- computed vs expressed: projections on each layer's refusal direction
        with self.stage("projections"):
            units = torch.stack([_unit_or_zero(refusal_layers.vectors[l]) for l in range(L)])
            proj = {}
            for name in ("baseline", "persona"):
                last = torch.stack([torch.cat([t[:, -1] for t in self._caches[name][l]]) for l in range(L)], dim=1)
                order = torch.cat([b.rows for b in plan.batches])
                x = torch.zeros_like(last)
                x[order] = last
                proj[f"harmful_{name}"] = [_mean_ci((x[:, l].double() @ units[l].double())) for l in range(L)]
                if name == "baseline":
                    resid_norm = [float(x[:, l].norm(dim=-1).mean()) for l in range(L)]
            proj["harmless_baseline"] = [_mean_ci(harmless_last[:, l].double() @ units[l].double()) for l in range(L)]
            projections = {"layers": list(range(L)), **proj, "direction": "each layer's diff-in-means at position -1",
                           "resid_norm": resid_norm,
                           "readd_relative_size": {f"{b}": [b * s / n if n > 0 else None for n in resid_norm]
                                                   for b in cfg.betas}}

        # -- cosines with a random null
        with self.stage("cosines"):
            cos = [None if persona_dirs.is_zero(l) or refusal_layers.is_zero(l) else
                   float(ops.cosine(persona_dirs.vectors[l].double(), refusal_layers.vectors[l].double()))
                   for l in range(L)]
            rnd = ops.random_unit_vectors(1000, cm.d_model, seed=cfg.seed + 1, dtype=torch.float64)
            null = (rnd @ refusal.unit.double()).sort().values
            cosines = {"layers": list(range(L)), "cosine": cos,
                       "null": {"lo": float(null[24]), "hi": float(null[974]), "n": 1000,
                                "note": "cosine of 1000 random unit vectors (seed+1) with a fixed direction"}}

        agreement = {}
        for name, g in (("baseline", base_gen), ("persona", pers_gen)):
            judged = [l == "refusal" for l in g["labels"]]
            agreement[name] = sum(a == b for a, b in zip(judged, g["refused"])) / len(judged)

        results = {
            "schema": RESULTS_SCHEMA,
            "model": cm.fingerprint(),
            "config": self.config_record["config"],
            "resolved_layers": self.layers,
            "prompt_sets": self.config_record["prompt_sets"],
            "judge": self.config_record["judge"],
            "randomness": {"seed": cfg.seed, "bootstrap_seed": cfg.seed, "bootstrap_resamples": cfg.bootstrap,
                           "knockout_random_directions_seed": cfg.seed, "cosine_null_seed": cfg.seed + 1,
                           "decoding": "greedy (no sampling)",
                           "note": "nothing else is random; torch's thread count, which can change the last bits "
                                   "of CPU sums, is in run_info"},
            "refusal_direction": {"layer": refusal.layer, "position": refusal.position, "norm": refusal.norm,
                                  "hook_name": refusal.hook_name, "selection": selection.get("chosen"),
                                  "file": "directions/refusal.json"},
            "persona_direction": {"layers": list(persona_dirs.layers), "norms": persona_dirs.norms.tolist(),
                                  "rollouts": rollout_summary, "method": cfg.persona_method,
                                  "file": "directions/persona.json"},
            "steering": {"persona_layer": P, "persona_alpha": cfg.persona_alpha, "norm": cfg.norm, "s": s,
                         "unit": "strengths are multiples of s; AddVector at blocks.{layer}.hook_resid_pre"},
            "baseline_refusal_rate": Rate(base_gen["labels"].count("refusal"), len(ev)).value,
            "baseline_refusal_ci": list(Rate(base_gen["labels"].count("refusal"), len(ev)).ci),
            "persona_refusal_rate": Rate(pers_gen["labels"].count("refusal"), len(ev)).value,
            "persona_refusal_ci": list(Rate(pers_gen["labels"].count("refusal"), len(ev)).ci),
            "baseline": {**outcome_rates(base_gen["labels"]), "first_token": first_token_stats(base_gen["refused"], base_gen["scores"])},
            "persona": {**outcome_rates(pers_gen["labels"]), "first_token": first_token_stats(pers_gen["refused"], pers_gen["scores"])},
            "first_token_agreement": agreement,
            "sweep": {"n": len(self.sweep_prompts), "baseline": first_token_stats(b_ref, b_sc),
                      "persona": first_token_stats(p_ref, p_sc), "baseline_judged": sweep_gen["baseline"],
                      "persona_judged": sweep_gen["persona"], "measure": "greedy first token is a refusal token"},
            "alpha_sweep": alpha_rows,
            "coherence_baseline": outcome_rates(coh0["labels"]),
            "gating": gating,
            "gating_control": control,
            "gating_confirm": confirm,
            "heatmap": heatmap,
            "knockout": knockout,
            "patching": patching,
            "projections": projections,
            "cosines": cosines,
            "examples": {
                "baseline": [{"instruction": i, "reply": r, "label": l} for i, r, l in
                             list(zip(ev, base_gen["replies"], base_gen["labels"]))[:6]],
                "persona": [{"instruction": i, "reply": r, "label": l} for i, r, l in
                            list(zip(ev, pers_gen["replies"], pers_gen["labels"]))[:6]],
            },
        }
        results["run_info"] = self._run_info(t_start)
        write_json(self.out / "results.json", results)
        return results

    def _run_info(self, t_start: float) -> dict:
        import importlib.metadata as md

        def version(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None

        return {
            "stage_seconds": {k: round(v, 2) for k, v in self.timings.items()},
            "total_seconds": round(time.time() - t_start, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed": self.store.resumed,
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "versions": {n: version(n) for n in ("persona-refusal", "torch", "transformer-lens", "transformers")},
        }


def study_prompts(config: GatingConfig) -> dict[str, PromptSet]:
    """The six prompt sets of a study (given files, else the bundled splits), trimmed to the
    configured sizes. Cheap: the CLI calls it before loading the model, so a bad prompt
    file fails in a second rather than after a minute of model loading."""
    c = config

    def get(path, label, split, n):
        ps = load_prompts(path, label=label) if path else bundled(label, split)
        return ps.head(n)

    sets = {
        "train_harmful": get(c.train_harmful, "harmful", "train", c.n_train),
        "train_harmless": get(c.train_harmless, "harmless", "train", c.n_train),
        "val_harmful": get(c.val_harmful, "harmful", "val", c.n_val),
        "val_harmless": get(c.val_harmless, "harmless", "val", c.n_val),
        "eval_harmful": get(c.eval_harmful, "harmful", "test", c.n_eval),
        "eval_harmless": get(c.eval_harmless, "harmless", "test", None),
    }
    if c.n_sweep > len(sets["eval_harmful"]):
        raise ConfigError(f"n_sweep {c.n_sweep} exceeds the {len(sets['eval_harmful'])} evaluation harmful prompts",
                          hint="lower n_sweep (--n-sweep) or give more evaluation prompts")
    if c.n_coherence > len(sets["eval_harmless"]):
        raise ConfigError(f"n_coherence {c.n_coherence} exceeds the {len(sets['eval_harmless'])} evaluation harmless prompts",
                          hint="lower n_coherence or give more evaluation harmless prompts")
    return sets


def _input_hashes(config: GatingConfig) -> dict:
    """sha256 of the saved directions a configuration names (a changed file is a new run)."""
    from persona_refusal.storage import sha256_file

    out = {}
    for name in ("refusal_direction", "persona_direction"):
        path = getattr(config, name)
        if path:
            stem = Path(path)
            stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
            files = [stem.with_name(stem.name + ext) for ext in (".json", ".safetensors")]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConfigError(f"{name} file {missing[0]} does not exist",
                                  hint="check the path: a saved direction is a NAME.json + NAME.safetensors pair")
            out[name] = {f.name: sha256_file(f) for f in files}
    return out


def _check_persona_layers(given: LayerDirections, n_layers: int) -> None:
    if set(given.layers) != set(range(n_layers)):
        raise ConfigError(f"the given persona directions cover layers {given.layers[0]}..{given.layers[-1]}, "
                          f"not every layer 0..{n_layers - 1}",
                          hint="give persona directions made at every layer of this model")


def _unit_or_zero(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if float(n) > 0 else torch.zeros_like(v)


def _restrict_layers(grid: DirectionGrid, layers: Sequence[int]) -> DirectionGrid:
    idx = [grid.layers.index(l) for l in layers]
    return DirectionGrid(positive_mean=grid.positive_mean[:, idx], negative_mean=grid.negative_mean[:, idx],
                         positions=grid.positions, layers=tuple(layers), name=grid.name, model_id=grid.model_id,
                         model_checksum=grid.model_checksum, n_positive=grid.n_positive, n_negative=grid.n_negative,
                         provenance=grid.provenance)


def run_gating_study(
    config: GatingConfig | None = None,
    out: str | os.PathLike = "runs/gating",
    *,
    chat_model: ChatModel | None = None,
    force: bool = False,
    progress: bool = True,
    judge=None,
) -> dict:
    """Run (or resume) the persona-gating study; write ``out/results.json`` and return it.

    Args:
        config: the study's settings (default: :class:`GatingConfig` defaults, demo model).
        out: output folder; a folder holding a run with the same configuration resumes.
        chat_model: an already loaded model (must match ``config.model`` in spirit; its
            id is recorded).
        force: start over in a folder holding a different configuration.
        judge: a custom judge (see :class:`persona_refusal.evaluation.Judge`).

    Example:
        >>> results = run_gating_study(GatingConfig.preset("smoke", model="tiny"), "runs/smoke",
        ...                            progress=False)                       # doctest: +SKIP
        >>> results                                                          # doctest: +SKIP
        GatingResults: persona gating of refusal — persona-refusal/tiny
          …
        >>> results["gating"][0]["layer"], results["refusal_direction"]["layer"]   # doctest: +SKIP
        (0, 3)
    """
    from persona_refusal.models import load_chat_model

    config = config or GatingConfig()
    cm = chat_model or load_chat_model(config.model, progress=progress)
    study = GatingStudy(cm, config, out, force=force, progress=progress, judge=judge)
    return GatingResults(study.run())


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` (or the folder holding it), checking its schema.

    Example:
        >>> results = load_results("runs/demo")                     # doctest: +SKIP
        >>> print(results.summary())                                 # doctest: +SKIP
        >>> from persona_refusal.analysis import gating_figure      # doctest: +SKIP
        >>> gating_figure(results).show()                            # doctest: +SKIP
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise RunFolderError(f"no results.json at {p}", hint="run `persona-refusal run --out DIR` first")
    try:
        data = read_json(p)
    except ValueError as e:
        raise RunFolderError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
        raise RunFolderError(f"{p} is not a persona_refusal gating results file")
    return GatingResults(data)
