"""The study's configuration: one dataclass per concern, checked in one place.

Context
-------
A gating study is defined by which prompts it reads, how it picks the refusal direction,
how it builds and scales the persona direction, and which layers each sweep visits. Each
concern is one small dataclass (:class:`PromptsConfig`, :class:`SelectionConfig`,
:class:`PersonaConfig`, :class:`SteeringConfig`, :class:`SweepConfig`,
:class:`HeatmapConfig`, :class:`KnockoutConfig`, :class:`PatchingConfig`, and
:class:`ComputeConfig` for the device and dtype), nested in :class:`StudyConfig`. Every
field carries a :class:`Check` in its metadata — its kind, range and help text — and that
one table drives three things: validation (:meth:`StudyConfig.validate`, run before a
model loads), the command-line flags (:func:`add_flags`), and the error messages.

Field names are unique across sections, so a config is also addressed *flat*:
``StudyConfig(model="tiny", n_train=8, persona_alpha=2)`` routes each name to its section,
``cfg.persona_alpha`` reads it back, and :meth:`StudyConfig.to_flat` is the flat record.
:meth:`StudyConfig.identity` — the flat record without the fields whose :class:`Check`
says ``identity=False`` (the device: where a run computes, not what) — is what run folders
and ``results.json`` store (schema 1) and what a resumed run must match.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from persona_refusal.decoding import DECODE_MODES
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import judge_name

__all__ = [
    "Check", "PromptsConfig", "SelectionConfig", "PersonaConfig", "SteeringConfig", "SweepConfig",
    "ProbesConfig", "HeatmapConfig", "KnockoutConfig", "PatchingConfig", "ComputeConfig", "StudyConfig", "Preset", "PRESETS",
    "MAX_STRENGTH", "MAX_SEED", "DTYPES", "DEVICE_HELP", "DTYPE_HELP", "DECODE_HELP", "layer_spec", "add_flags",
    "flags_to_fields", "paper_layers", "PAPER_DEPTH", "resolve_device", "position_spec", "SectionedConfig",
    "ConfigSection", "setting", "TOP_FIELDS", "JUDGE_CHECK", "canonical_judge",
]

MAX_STRENGTH = 100.0
"""Largest steering strength (persona ``α``, re-add ``β``) accepted, in units of the common
norm ``s``: the paper uses 2–3; far beyond 100 an added vector swamps the residual stream,
and a strength such as 1e30 overflows float32."""

MAX_SEED = 2**63 - 1
"""Largest seed: torch generators take 64-bit seeds."""

LAYER_SPEC_HELP = "all, every:N, from:N, below:F (comma-combined), or a list such as 0,4,8"

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""The dtypes a model can run in (weights and activations; directions and statistics stay
float32/float64 on the CPU whatever the model's dtype)."""

DEVICE_HELP = "where the model runs: auto (default: CUDA when available, else CPU), cpu, cuda, cuda:N or mps"
"""``--help`` line of every ``--device`` flag."""
DTYPE_HELP = "dtype of the model's weights and activations: " + ", ".join(DTYPES) + " (default float32)"
"""``--help`` line of every ``--dtype`` flag."""
DECODE_HELP = ("decoding steps of generation: packed (fastest on a CPU, a second copy of the weights), "
               "plain (no extra memory) or reference (TransformerLens' forward); default packed")
"""``--help`` line of every ``--decode`` flag."""

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


# ============================================================================ field checks
@dataclass(frozen=True)
class Check:
    """How one configuration field is checked and offered on the command line."""

    kind: str
    """``int``, ``float``, ``bool``, ``str``, ``path``, ``choice``, ``strengths`` (a list of
    finite numbers within ±:data:`MAX_STRENGTH`), ``layers`` (a list of layers or a spec
    string), ``ints`` (a list of integers), ``positions`` (a list of negative ints) or
    ``judge`` (a judge name, :func:`persona_refusal.evaluation.judge_name`)."""
    help: str = ""
    """One line for ``--help``."""
    optional: bool = False
    """``None`` is allowed (it means "the default derived from the model")."""
    low: int | float | None = None
    """Smallest allowed value (numbers)."""
    high: int | float | None = None
    """Largest allowed value (numbers)."""
    choices: tuple = ()
    """Allowed values of a ``choice`` field."""
    flag: bool = True
    """Offered as a ``--flag`` on ``persona-refusal run``."""
    nonempty: bool = False
    """A list that must hold at least one value."""
    identity: bool = True
    """Part of a run's identity (:meth:`StudyConfig.identity`): a run folder resumes only
    with the same value. ``False`` for fields that say where a run computes, not what it
    computes (the device)."""

    def check(self, name: str, v: Any) -> None:
        """Raise :class:`ConfigError` (one line) if ``v`` is not a valid value of ``name``."""
        if v is None:
            if self.optional:
                return
            raise ConfigError(f"{name} must be set, got None")
        getattr(self, f"_check_{self.kind}")(name, v)

    def _range(self, name: str, v: Any, hint: str | None = None) -> None:
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            if self.high is None:
                raise ConfigError(f"{name} must be at least {self.low:g}, got {v}")
            raise ConfigError(f"{name} {v!r} is out of range", hint=hint or f"use a value between {self.low:g} and {self.high:g}")

    def _check_int(self, name: str, v: Any) -> None:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ConfigError(f"{name} must be an integer, got {v!r}", hint="use a whole number")
        self._range(name, v)

    def _check_float(self, name: str, v: Any) -> None:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise ConfigError(f"{name} must be a number, got {v!r}", hint="use a number such as 0.1")
        if not math.isfinite(v) and not (self.high is None and v == math.inf):
            raise ConfigError(f"{name} must be finite, got {v}", hint="use a finite number")
        self._range(name, v, hint=f"use a strength between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}"
                    if self.high == MAX_STRENGTH else None)

    def _check_bool(self, name: str, v: Any) -> None:
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")

    def _check_str(self, name: str, v: Any) -> None:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{name} must be a non-empty string, got {v!r}")

    _check_path = _check_str

    def _check_choice(self, name: str, v: Any) -> None:
        if v not in self.choices:
            raise ConfigError(f"unknown {name} {v!r}", hint=f"use {', '.join(map(str, self.choices))}")

    def _check_strengths(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{name} must be a list of strengths, got {v!r}", hint="write it as a list, e.g. [1.0, 2.0]")
        if self.nonempty and not v:
            raise ConfigError(f"{name} must hold at least one strength")
        for x in v:
            if not isinstance(x, numbers.Real) or isinstance(x, bool) or not math.isfinite(x):
                raise ConfigError(f"{name} holds a non-finite strength {x!r}", hint="use finite numbers")
            if abs(x) > MAX_STRENGTH:
                raise ConfigError(f"{name} holds the strength {x!r}, out of range",
                                  hint=f"use strengths between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}")

    def _check_ints(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{name} must be a list of integers, got {v!r}", hint="write it as a list, e.g. [0, 4, 8]")

    def _check_strs(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ConfigError(f"{name} must be a list of non-empty strings, got {v!r}",
                              hint='write it as a list, e.g. ["character", "scripted"]')

    def _check_layers(self, name: str, v: Any) -> None:
        if isinstance(v, str):
            layer_spec(name, v, 1)  # the syntax; ranges are checked once the model's depth is known
            return
        self._check_ints(name, v)
        layer_spec(name, v, 1)  # a negative layer fails now, as in a spec

    def _check_cells(self, name: str, v: Any) -> None:
        if not isinstance(v, dict) or not v:
            raise ConfigError(f"{name} must map cell names to lists of layers, got {v!r}",
                              hint='write it as {"late": [20], "paired": [20, 22]} or late=20,paired=20+22')
        for cell, layers in v.items():
            if not isinstance(cell, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", cell):
                raise ConfigError(f"{name}: bad cell name {cell!r}", hint="use letters, digits, _ and -")
            self._check_ints(f"{name}[{cell!r}]", layers)
            if not layers:
                raise ConfigError(f"{name}[{cell!r}] holds no layer")

    def _check_device(self, name: str, v: Any) -> None:
        # the spelling only: whether this machine has the device is checked when the model loads (resolve_device)
        if not isinstance(v, str) or not _DEVICE_RE.fullmatch(v):
            raise ConfigError(f"unknown {name} {v!r}", hint="use auto, cpu, cuda, cuda:N or mps")

    def _check_judge(self, name: str, v: Any) -> None:
        judge_name(v)  # strict, keyword, lenient, model or model:NAME; a one-line error otherwise

    def _check_position_spec(self, name: str, v: Any) -> None:
        if isinstance(v, str):
            position_spec(name, v, [-1])  # the syntax; ranges are checked once the model is known
            return
        self._check_positions(name, v)

    def _check_count_or_all(self, name: str, v: Any) -> None:
        if v == "all":
            return
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ConfigError(f"{name} must be a whole number or 'all', got {v!r}", hint="use e.g. 12, or all")
        self._range(name, v)

    def _check_choices(self, name: str, v: Any) -> None:
        self._check_strs(name, v)
        bad = [x for x in v if x not in self.choices]
        if bad:
            raise ConfigError(f"unknown {name} {bad[0]!r}", hint=f"use {', '.join(map(str, self.choices))}")

    def _check_positions(self, name: str, v: Any) -> None:
        self._check_ints(name, v)
        if not v:
            raise ConfigError(f"{name} must hold at least one position")
        for p in v:
            if p >= 0:
                raise ConfigError(f"selection positions count from the end and must be negative, got {p}")


def setting(default: Any, check: Check, *, factory: bool = False) -> Any:
    """A dataclass field with its :class:`Check` in the metadata."""
    if factory:
        return field(default_factory=lambda: list(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


class ConfigSection:
    """Shared behaviour of the config sections: validation, dict round trip."""

    SECTION: ClassVar[str] = ""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["check"].check(f.name, getattr(self, f.name))

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))


JUDGE_CHECK = Check("judge", "the judge of headline rates: strict (alias keyword), lenient, model (= model:demo-1.5b) "
                            "or model:NAME (a model name or path)")
"""The check of every study's ``judge`` field."""


def canonical_judge(section: Any) -> None:
    """Store a section's ``judge`` in its canonical form (``keyword`` → ``strict``, ``model``
    → ``model:demo-1.5b``), so that one judge is one run identity; a bad name is left to
    ``validate()``, which says why."""
    if isinstance(section.judge, str):
        try:
            section.judge = judge_name(section.judge)
        except ConfigError:
            pass


# ============================================================================ the sections
@dataclass
class PromptsConfig(ConfigSection):
    """Which prompts the study reads, and how many of each."""

    SECTION: ClassVar[str] = "prompts"
    train_harmful: str | None = setting(None, Check("path", "train harmful prompts (csv/json/jsonl/txt)", optional=True))
    """Harmful prompts for the refusal direction (path; default: bundled train split)."""
    train_harmless: str | None = setting(None, Check("path", "train harmless prompts", optional=True))
    """Harmless prompts for the refusal direction (default: bundled train split)."""
    val_harmful: str | None = setting(None, Check("path", "val harmful prompts (selection)", optional=True))
    """Harmful prompts for selecting the refusal direction (default: bundled val split)."""
    val_harmless: str | None = setting(None, Check("path", "val harmless prompts (selection)", optional=True))
    """Harmless prompts for selecting the refusal direction (default: bundled val split)."""
    eval_harmful: str | None = setting(None, Check("path", "evaluation harmful prompts", optional=True))
    """Evaluation harmful prompts (default: bundled test split)."""
    eval_harmless: str | None = setting(None, Check("path", "evaluation harmless prompts (coherence)", optional=True))
    """Evaluation harmless prompts, for coherence checks (default: bundled test split)."""
    n_train: int | None = setting(96, Check("int", "training prompts per side", optional=True, low=1))
    """Training prompts per side (``None``: all)."""
    n_val: int | None = setting(24, Check("int", "selection prompts per side", optional=True, low=1))
    """Selection prompts per side (``None``: all)."""
    n_eval: int | None = setting(None, Check("int", "evaluation harmful prompts", optional=True, low=1))
    """Evaluation harmful prompts for the generated baseline/persona rates (``None``: all)."""
    n_sweep: int = setting(32, Check("int", "evaluation prompts used by the first-token sweeps", low=1))
    """First ``n`` evaluation harmful prompts used by the first-token sweeps."""
    n_coherence: int = setting(12, Check("int", "evaluation harmless prompts of the coherence checks", low=1))
    """First ``n`` evaluation harmless prompts used for coherence checks."""
    system_prompt: str | None = setting(None, Check("str", "system prompt of every harmful/harmless study prompt "
                                               "(default: the chat template's own)", optional=True))
    """The system prompt every train, val and evaluation prompt is formatted with (the
    paper: ``"You are a helpful assistant."``); ``None`` keeps the chat template's default
    (Qwen's adds "You are Qwen, created by Alibaba Cloud…"). Persona rollouts use their
    own system prompts."""


@dataclass
class SelectionConfig(ConfigSection):
    """How the refusal direction is chosen (Arditi et al.'s filters), or given."""

    SECTION: ClassVar[str] = "selection"
    selection_positions: list[int] = setting([-1], Check("positions", "positions (from the end) that compete in selection",
                                                    flag=False), factory=True)
    """Positions (from the end) whose candidates compete in selection (the study reads
    the last prompt token, as the paper does)."""
    selection_layers: list[int] | str | None = setting(None, Check("layers", "candidate layers of selection", optional=True))
    """Candidate layers for selection (default ``"every:3,below:0.8"``: every 3rd layer
    below 0.8·n_layers). Layer lists also take the strings ``"all"``, ``"every:N"``,
    ``"from:N"`` and ``"below:F"`` (comma-combined)."""
    refusal_direction: str | None = setting(None, Check("path", "use this saved refusal direction (skip selection)",
                                                   optional=True))
    """A saved :class:`Direction` to use as the refusal direction instead of selecting one
    (the diff-in-means grid is still computed, for per-layer analyses)."""
    refusal_layer: int | None = setting(None, Check("int", "fixed refusal-direction layer (no selection)", optional=True,
                                               low=0))
    """Use the diff-in-means direction at the last prompt token of this ``resid_pre``
    layer, with no selection (the paper: a fixed layer 14 on 28-layer models). ``None``:
    Arditi et al.'s selection (or, with ``layer_rule="paper"``, the paper's layer scaled by depth)."""
    kl_threshold: float = setting(0.1, Check("float", "selection: largest KL (nats) of ablation on harmless val", low=0))
    """Selection: largest KL (nats) that ablation may cause on harmless val prompts."""
    induce_threshold: float = setting(0.0, Check("float", "selection: smallest refusal score addition must induce"))
    """Selection: smallest mean refusal score that addition must induce on harmless val."""
    selection_fallback: str | None = setting("relative", Check("choice", "fallback when no candidate passes",
                                                          optional=True, choices=("relative",)))
    """When no candidate passes Arditi et al.'s filters: ``"relative"`` requires only that
    addition raises the harmless refusal score above the unedited one (small models rarely
    put half their probability on a refusal token); ``None`` stops the run."""


@dataclass
class PersonaConfig(ConfigSection):
    """How the compliant-persona direction is made (rollouts), or given."""

    SECTION: ClassVar[str] = "persona"
    persona_direction: str | None = setting(None, Check("path", "use these saved persona directions (skip rollouts)",
                                                   optional=True))
    """Saved :class:`LayerDirections` to use as persona directions instead of rollouts."""
    personas: str = setting("scripted", Check("str", "persona prompt set: character, scripted, or a JSON/YAML file"))
    """The persona system prompts and probe questions: ``"character"`` (bundled: characters
    described, no reply wording named — the paper's kind of contrast), ``"scripted"``
    (bundled: the package's original set, some of whose refuser prompts dictate the
    reply's wording), or a file (JSON, or the paper's YAML shape), see
    :func:`persona_refusal.prompts.load_personas`."""
    persona_sets: list[str] = setting([], Check("strs", "persona sets whose directions the persona_sets stage compares",
                                           flag=True), factory=True)
    """Persona sets (names or files) whose directions are compared with the refusal
    direction by the ``persona_sets`` stage (empty: the stage does nothing)."""
    persona_questions: int | None = setting(8, Check("int", "probe questions per persona system prompt", optional=True, low=1))
    """Probe questions per persona system prompt (``None``: all 16)."""
    persona_max_new_tokens: int = setting(24, Check("int", "reply length of persona rollouts", low=1))
    """Reply length of persona rollouts."""
    persona_filter: str = setting("judge", Check("choice", "which rollouts count", choices=("judge", "none")))
    """``"judge"``: in-character rollouts only; ``"none"``: all (tiny models)."""
    persona_balance: str = setting("prompt", Check("choice", "how kept rollouts are averaged: prompt (each system "
                                                             "prompt the same), rollout, or first_k (the first protocol)",
                                                   choices=("prompt", "rollout", "first_k")))
    """How a side's in-character rollouts are averaged (:mod:`persona_refusal.persona`):
    ``"prompt"`` (each system prompt that produced one weighs the same), ``"rollout"``
    (each rollout the same) or ``"first_k"`` (the first ``k`` per side in list order, ``k``
    the smaller side's count: the package's first protocol, which drops whole prompts)."""
    persona_samples: int = setting(1, Check("int", "rollouts per persona prompt and question (1: greedy; more: sampled)",
                                            low=1, high=64))
    """Rollouts per (system prompt, question): 1 decodes greedily; more are sampled at
    :attr:`persona_temperature` (seeded by the run's ``seed``)."""
    persona_temperature: float = setting(1.0, Check("float", "sampling temperature of persona rollouts "
                                                             "(with persona_samples > 1)", low=0.01, high=10))
    """Sampling temperature of persona rollouts when :attr:`persona_samples` > 1 (the paper: 1)."""
    persona_method: str = setting("last_token", Check("choice", "how rollouts become a direction",
                                                 choices=("last_token", "response_avg")))
    """``"last_token"`` or ``"response_avg"``."""


@dataclass
class SteeringConfig(ConfigSection):
    """Where and how strongly the persona is steered in; the common norm of strengths."""

    SECTION: ClassVar[str] = "steering"
    layer_rule: str = setting("package", Check("choice", "how unset layers are derived from the model's depth",
                                          choices=("package", "paper")))
    """How layers left unset are chosen: ``"package"`` (persona at round(0.65·L), Arditi
    selection of the refusal layer) or ``"paper"`` (Zhong & Li's Qwen2.5-7B layers scaled
    by depth, see :func:`paper_layers`)."""
    persona_layer: int | None = setting(None, Check("int", "resid_pre layer of persona steering", optional=True))
    """Layer where persona steering is added (default: round(0.65·n_layers), or the paper's
    rule)."""
    persona_source_layer: int | None = setting(None, Check("int", "layer whose persona direction is steered in",
                                                      optional=True, low=0))
    """Layer whose persona direction is added at :attr:`persona_layer` (default: the same
    layer; the paper extracts at ``hidden_states[20]`` and adds at block 20's output, i.e.
    ``resid_pre`` 20 → ``resid_pre`` 21)."""
    persona_alpha: float = setting(3.0, Check("float", "persona strength (units of the common norm)",
                                         low=-MAX_STRENGTH, high=MAX_STRENGTH))
    """Persona steering strength, in units of the common norm (the paper: 3)."""
    alphas: list[float] = setting([1.0, 2.0, 3.0, 4.0, 6.0], Check("strengths", "persona strengths of the dose-response sweep"),
                             factory=True)
    """Persona strengths of the dose–response sweep."""
    norm: str = setting("persona", Check("choice", "common steering norm", choices=("refusal", "persona", "mean")))
    """Common steering norm ``s``: ``"persona"`` (the persona direction's norm at the
    persona layer: α = 3 means three times the compliant − refuser difference where it is
    added), ``"refusal"`` (the refusal direction's norm at its own layer) or ``"mean"``."""
    allow_transfer: bool = setting(False, Check("bool", "accept saved directions made with another model of the same width"))
    """Accept saved directions made with another model of the same width, on purpose."""
    calibrate_alpha: bool = setting(False, Check("bool", "choose the persona strength on the val prompts"))
    """Choose α on the val split (stage ``calibrate``): the smallest α of
    :attr:`calibration_alphas` whose judged val refusal is at most
    :attr:`calibration_target` while harmless val replies stay coherent. The evaluation
    prompts never enter the choice."""
    calibration_alphas: list[float] = setting([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0],
                                         Check("strengths", "persona strengths tried by calibration (ascending)",
                                               nonempty=True), factory=True)
    """The grid calibration walks up, smallest first; it stops at the first α that passes."""
    calibration_target: float = setting(0.10, Check("float", "calibration: largest judged val refusal rate", low=0, high=1))
    """Calibration: the largest judged refusal rate on harmful val prompts that passes."""
    calibration_max_degenerate: float = setting(0.25, Check("float", "calibration: largest degenerate share of harmless "
                                                       "val replies", low=0, high=1))
    """Calibration: the largest share of degenerate replies on harmless val prompts that passes."""
    calibration_max_new_tokens: int = setting(64, Check("int", "reply length of calibration replies", low=1))
    """Reply length of calibration replies."""


@dataclass
class SweepConfig(ConfigSection):
    """The gating sweep (persona on), its control (persona off), and judged replies."""

    SECTION: ClassVar[str] = "sweeps"
    betas: list[float] = setting([2.0], Check("strengths", "refusal re-add strengths of the gating sweep", nonempty=True), factory=True)
    """Refusal re-add strengths of the gating sweep (the paper: 2)."""
    beta_ratios: list[float] | None = setting(None, Check("strengths", "re-add strengths as multiples of α (replaces betas)",
                                                     optional=True, nonempty=True))
    """Re-add strengths as multiples of the persona strength α (the calibrated one when
    calibrating): β = ratio·α. The paper's ratio is 2 / 2.5 = 0.8 on Qwen. Replaces :attr:`betas`."""
    readd_cells: dict[str, list[int]] | None = setting(None, Check("cells", "named re-add cells, e.g. late=20,paired=20+22",
                                                              optional=True))
    """Named sets of ``resid_pre`` layers the refusal direction is re-added at together
    (default: the paper's early, late and paired late cells scaled by depth)."""
    judged_sweep: bool = setting(False, Check("bool", "also judge generated replies at the gating layers (stage gating_judged)"))
    """Run the judged gating sweep: generated replies of :attr:`max_new_tokens` tokens to
    the evaluation prompts, judged by both judges, at :attr:`judged_layers` and the cells."""
    judged_layers: list[int] | str | None = setting(None, Check("layers", "re-add layers of the judged sweep (default every:2)",
                                                           optional=True))
    """Re-add layers of the judged gating sweep (default ``"every:2"``)."""
    judge: str = setting("strict", JUDGE_CHECK)
    """The judge whose labels are the headline rates: ``"strict"`` (Arditi et al.'s
    phrases; alias ``"keyword"``), ``"lenient"`` (the paper's: broader phrases anywhere in
    the first 500 characters), or a model judge, ``"model:NAME"`` (a chat model asked a
    rubric question, :class:`persona_refusal.evaluation.ModelJudge`; ``"model"`` is
    ``"model:demo-1.5b"``). Stored in its canonical form (``"keyword"`` → ``"strict"``,
    ``"model"`` → ``"model:demo-1.5b"``), so one judge is one run identity. Judged stages
    record both phrase judges, and the model judge too when it is the headline one."""
    early_stop: bool = setting(False, Check("bool", "judged replies stop once every judge's label is final"))
    """Stop a judged reply once every judge's label is final (a refusal phrase seen, or the
    judge's window of characters written); labels are unchanged, replies are shorter."""
    control_betas: list[float] = setting([2.0], Check("strengths", "re-add strengths of the control sweep"), factory=True)
    """Re-add strengths of the control sweep without persona steering."""
    gating_layers: list[int] | str | None = setting(None, Check("layers", "layers of the gating sweep (default all)",
                                                           optional=True))
    """Layers of the gating sweep (default: every layer)."""
    control_layers: list[int] | str | None = setting(None, Check("layers", "layers of the control sweep (default every:2)",
                                                            optional=True))
    """Layers of the control sweep without persona steering (default ``"every:2"``)."""
    max_new_tokens: int = setting(32, Check("int", "reply length of judged generations", low=1))
    """Reply length of judged generations."""

    def __post_init__(self) -> None:
        canonical_judge(self)


@dataclass
class ProbesConfig(ConfigSection):
    """Checks of the gating claims: the re-add on benign prompts, strength sensitivity, and
    the persona direction without its refusal component."""

    SECTION: ClassVar[str] = "probes"
    control_harmless: bool = setting(False, Check("bool", "judge every cell at every β and the judged layers without "
                                                          "the persona on harmless prompts (stage gating_judged)"))
    """Run every re-add cell at every β, and the judged sweep's layers at β₀, without the
    persona on the harmless evaluation prompts (``gating_judged.control_harmless``): can the
    re-added direction cause refusal on its own where the model does not refuse?"""
    n_control_harmless: int | None = setting(None, Check("int", "harmless evaluation prompts of control_harmless",
                                                         optional=True, low=1))
    """First ``n`` harmless evaluation prompts of :attr:`control_harmless` (``None``: all)."""
    sensitivity_alpha_multipliers: list[float] = setting([], Check("strengths", "persona strengths of the sensitivity "
                                                                   "table, as multiples of α (stage sensitivity)"),
                                                         factory=True)
    """Persona strengths of the sensitivity table as multiples of the (calibrated) α, e.g.
    ``[1, 2]`` (empty: the stage does nothing)."""
    sensitivity_beta_ratios: list[float] = setting([0.6667, 0.8, 1.0], Check("strengths", "re-add strengths of the "
                                                                             "sensitivity table, as multiples of its α",
                                                                             nonempty=True), factory=True)
    """Re-add strengths of the sensitivity table as multiples of each row's persona
    strength (β/α), for every cell."""
    early_beta_ratios: list[float] = setting([], Check("strengths", "smaller re-add strengths (multiples of α) "
                                                       "for the early cell"), factory=True)
    """Smaller re-add strengths (β/α) tried in the cell named :attr:`early_cell` at the
    calibrated α, so that "early does not restore" can be read where its replies stay coherent."""
    early_cell: str = setting("early", Check("str", "the cell that gets early_beta_ratios", flag=False))
    """The cell :attr:`early_beta_ratios` apply to."""
    persona_orthogonal: bool = setting(False, Check("bool", "steer the persona direction without its refusal "
                                                            "component (stage persona_orthogonal)"))
    """Stage ``persona_orthogonal``: the persona direction with its component along a
    refusal direction projected out, that component alone, and a matched random component
    removed, each steered at α, with the re-add cells under each removal."""


@dataclass
class HeatmapConfig(ConfigSection):
    """The cross-layer heatmap: persona layer × re-add layer."""

    SECTION: ClassVar[str] = "heatmap"
    heatmap_persona_layers: list[int] | None = setting(None, Check("ints", "persona layers of the heatmap", optional=True))
    """Persona layers of the heatmap (default: round(f·n_layers), f = 0.4, 0.65, 0.85)."""
    heatmap_refusal_layers: list[int] | str | None = setting(None, Check("layers", "re-add layers of the heatmap",
                                                                    optional=True))
    """Re-add layers of the heatmap (default: every 4th layer)."""


@dataclass
class KnockoutConfig(ConfigSection):
    """Persona knockout: the persona direction ablated over windows of layers."""

    SECTION: ClassVar[str] = "knockout"
    knockout_window: int | None = setting(None, Check("int", "width of a knockout window", optional=True, low=1))
    """Width of a knockout window (default: max(2, n_layers // 6))."""
    knockout_starts: list[int] | None = setting(None, Check("ints", "first layers of the knockout windows", optional=True))
    """First layers of the knockout windows (default: tiling the model)."""


@dataclass
class PatchingConfig(ConfigSection):
    """Activation patching from the default run into the persona run."""

    SECTION: ClassVar[str] = "patching"
    patch_layers: list[int] | str | None = setting(None, Check("layers", "layers of activation patching", optional=True))
    """Layers of activation patching (default: persona layer to the last layer)."""
    patch_position_layers: list[int] | None = setting(None, Check("ints", "layers where each position is patched alone",
                                                             optional=True))
    """Layers where each post-instruction position is patched alone (default: 3 layers
    from the persona layer on)."""


@dataclass
class ComputeConfig(ConfigSection):
    """Where the model runs, and in which dtype."""

    SECTION: ClassVar[str] = "compute"
    device: str = setting("auto", Check("device", DEVICE_HELP, identity=False))
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` (see :func:`resolve_device`). Not part of the run's identity: a run started on
    one device resumes on another; ``results.json`` records the device used in ``run_info``."""
    dtype: str = setting("float32", Check("choice", DTYPE_HELP, choices=DTYPES))
    """The model's dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``. Part of the run's
    identity (it changes the numbers): a run resumes only in the dtype it started in.
    Directions, cached residuals and statistics are float32/float64 on the CPU in every dtype."""
    decode: str = setting("packed", Check("choice", DECODE_HELP, choices=DECODE_MODES, identity=False))
    """How generation runs its decoding steps: ``"packed"`` (fastest on a CPU; a reordered
    second copy of the weight matrices), ``"plain"`` (the same path, no extra memory) or
    ``"reference"`` (TransformerLens' forward); see :mod:`persona_refusal.decoding`. The
    modes agree up to float rounding, so it is not part of the run's identity (like the
    device); ``results.json`` records it in ``run_info``."""


SECTIONS: tuple[type[ConfigSection], ...] = (PromptsConfig, SelectionConfig, PersonaConfig, SteeringConfig, SweepConfig,
                                        ProbesConfig, HeatmapConfig, KnockoutConfig, PatchingConfig, ComputeConfig)

TOP_FIELDS: dict[str, tuple[Any, Check]] = {
    "model": ("demo", Check("str", "demo (default), demo-1.5b, tiny, a .gguf file, a HF folder or a hub name")),
    # Not part of the identity record: a given template is in the model's fingerprint instead
    # (ChatModel.fingerprint), which every run folder checks, so earlier run folders keep resuming.
    "chat_template": (None, Check("path", "a Jinja chat template file, for a model without one (a base model)",
                                  optional=True, identity=False)),
    "bootstrap": (2000, Check("int", "bootstrap resamples of every bootstrap interval", low=1)),
    "seed": (0, Check("int", "seed of every random draw", low=0, high=MAX_SEED)),
    "batch_size": (None, Check("int", "prompts per forward batch (default: by token budget)", optional=True, low=1)),
}
"""The top-level fields every study's configuration has: ``name -> (default, check)``."""


# ============================================================================ presets
@dataclass(frozen=True)
class Preset:
    """A named study: which stages run, and the configuration fields it changes."""

    overrides: dict
    """Flat configuration fields the preset sets."""
    stages: tuple[str, ...] | None = None
    """Stages it runs (``None``: every registered stage)."""
    doc: str = ""
    """One line for ``--help``."""


PRESETS: dict[str, Preset] = {
    "default": Preset({}, doc="sized for a 2-core laptop CPU with the demo model (~10 min)"),
    "full": Preset({"n_train": None, "n_val": None, "n_sweep": 64, "n_coherence": 24, "selection_layers": "below:0.8",
                    "betas": [1.0, 2.0, 4.0], "control_betas": [1.0, 2.0], "persona_questions": None,
                    "heatmap_refusal_layers": "every:2", "max_new_tokens": 64,
                    "control_layers": "all", "alphas": [0.5, 1.0, 2.0, 3.0, 4.0, 6.0]},
                   doc="finer grids, every prompt"),
    "smoke": Preset({"n_train": 16, "n_val": 8, "n_eval": 12, "n_sweep": 8, "n_coherence": 4, "alphas": [1.0, 3.0],
                     "betas": [2.0], "control_betas": [2.0], "persona_questions": 3, "persona_max_new_tokens": 8,
                     "persona_filter": "none", "max_new_tokens": 8, "bootstrap": 200,
                     "kl_threshold": 1e9, "induce_threshold": -1e9},
                    doc="every stage on a few prompts (plumbing check)"),
}

PAPER_V1_OVERRIDES: dict = {
    # Zhong & Li (2026), src/consolidated.py, as the first paper-protocol runs were made
    # (figures/demo/paper, figures/demo-1.5b/paper): the character set, the first-k persona estimate
    "layer_rule": "paper", "personas": "character", "system_prompt": "You are a helpful assistant.",
    "judge": "lenient", "judged_sweep": True, "judged_layers": "every:2", "max_new_tokens": 128, "early_stop": True,
    "calibrate_alpha": True, "beta_ratios": [0.8, 1.0, 2.0], "norm": "persona",
    "n_train": None, "n_val": None, "n_eval": 64, "n_sweep": 64, "n_coherence": 24,
    "persona_questions": None, "persona_max_new_tokens": 32, "persona_sets": ["character", "scripted"],
    "alphas": [1.0, 2.0, 3.0, 4.0, 6.0, 8.0], "control_layers": "every:2", "persona_balance": "first_k",
}
"""The ``paper-v1`` preset's fields: the paper's protocol as the package's first
paper-protocol runs made it (kept so that they can be reproduced)."""

PAPER_OVERRIDES: dict = {
    # the paper protocol with every in-character rollout and the paper's kind of persona
    # contrast, plus the checks of its claims; written down in docs/results/paper-protocol-2.md
    **PAPER_V1_OVERRIDES,
    "personas": "instructed", "persona_balance": "prompt", "persona_sets": ["instructed", "character", "scripted"],
    "control_harmless": True, "n_control_harmless": 32,
    "sensitivity_alpha_multipliers": [1.0, 2.0], "sensitivity_beta_ratios": [0.6667, 0.8, 1.0],
    "early_beta_ratios": [0.1, 0.25, 0.5], "persona_orthogonal": True,
}
"""The ``paper`` preset's fields: the paper's protocol on this package's prompts."""

PAPER_V1_STAGES = ("refusal", "persona", "steering", "calibrate", "eval", "sweep_caches", "alpha_sweep", "gating",
                   "gating_judged", "cosines", "persona_sets")
"""The stages the ``paper-v1`` preset runs."""

PAPER_STAGES = PAPER_V1_STAGES + ("sensitivity", "persona_orthogonal")
"""The stages the ``paper`` presets run (the per-layer mechanism stages are left to ``default``/``full``)."""

PRESETS["paper"] = Preset(PAPER_OVERRIDES, PAPER_STAGES,
                          doc="Zhong & Li's protocol: instructed personas (every in-character rollout), paper layers by "
                              "depth, α calibrated on val, judged 128-token replies at every 2nd layer, benign control, "
                              "strength sensitivity, the persona without its refusal component")
PRESETS["paper-v1"] = Preset(PAPER_V1_OVERRIDES, PAPER_V1_STAGES,
                             doc="the paper protocol as first run (character personas, first-k persona estimate); "
                                 "reproduces figures/*/paper")
PRESETS["paper-smoke"] = Preset(
    {**PAPER_OVERRIDES, "n_train": 16, "n_val": 8, "n_eval": 8, "n_sweep": 8, "n_coherence": 4, "persona_questions": 3,
     "persona_max_new_tokens": 8, "persona_filter": "none", "max_new_tokens": 16, "calibration_max_new_tokens": 8,
     "calibration_alphas": [1.0, 4.0], "judged_layers": "every:6", "alphas": [1.0, 3.0], "bootstrap": 200,
     "n_control_harmless": 4},
    PAPER_STAGES, doc="the paper preset's stages on a few prompts (plumbing check)")


# ============================================================================ sectioned configurations
class SectionedConfig:
    """The shape every study's configuration shares: the top-level fields of
    :data:`TOP_FIELDS`, then one :class:`ConfigSection` dataclass per concern (class attribute
    ``SECTIONS``), with field names unique across sections so they can be given and read
    flat; named presets (``PRESETS``). A subclass only lists its sections and presets;
    construction, validation, the flat and nested records, the identity of a run and the
    derived CLI flags (:func:`add_flags`) come from here.
    """

    SECTIONS: ClassVar[tuple[type[ConfigSection], ...]] = ()
    """The sections, in the order of the nested record."""
    PRESETS: ClassVar[dict[str, Preset]] = {}
    """Named presets: flat overrides and the stages they run."""
    LEGACY: ClassVar[dict[str, Any]] = {}
    """Fields whose default changed: ``name -> the value a record without the field meant``
    (:meth:`from_dict` reads an older record as the protocol it was made with)."""
    _FIELD_SECTION: ClassVar[dict[str, str]] = {}
    _SECTION_CLASS: ClassVar[dict[str, type[ConfigSection]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._FIELD_SECTION = {f.name: s.SECTION for s in cls.SECTIONS for f in dataclasses.fields(s)}
        cls._SECTION_CLASS = {s.SECTION: s for s in cls.SECTIONS}
        clash = set(cls._FIELD_SECTION) & set(TOP_FIELDS)
        if len(cls._FIELD_SECTION) != sum(len(dataclasses.fields(s)) for s in cls.SECTIONS) or clash:
            raise TypeError(f"{cls.__name__}: field names must be unique across sections and the top level")

    def __init__(self, **fields: Any) -> None:
        top = {name: fields.pop(name, default) for name, (default, _) in TOP_FIELDS.items()}
        for name, value in top.items():
            object.__setattr__(self, name, value)
        given: dict[str, dict] = {s.SECTION: {} for s in self.SECTIONS}
        for key, value in fields.items():
            if key in self._SECTION_CLASS:
                cls = self._SECTION_CLASS[key]
                if isinstance(value, cls):
                    value = value.to_dict()
                if not isinstance(value, dict):
                    raise ConfigError(f"section {key} must be a {cls.__name__} or a dict, got {value!r}")
                for k, v in value.items():
                    if k in self._FIELD_SECTION and self._FIELD_SECTION[k] != key:
                        raise ConfigError(f"{k} is not a field of section {key}",
                                          hint=f"it belongs to section {self._FIELD_SECTION[k]}, or give it flat")
                    if k not in self._FIELD_SECTION:
                        raise self._unknown(k)
                    given[key][k] = v
            elif key in self._FIELD_SECTION:
                given[self._FIELD_SECTION[key]][key] = value
            else:
                raise self._unknown(key)
        for s in self.SECTIONS:
            setattr(self, s.SECTION, s(**given[s.SECTION]))
        self.validate()

    def __getattr__(self, name: str) -> Any:  # flat reads: cfg.persona_alpha
        section = type(self)._FIELD_SECTION.get(name)
        if section is None or section not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        return getattr(self.__dict__[section], name)

    def __setattr__(self, name: str, value: Any) -> None:
        section = type(self)._FIELD_SECTION.get(name)
        if section is not None and section in self.__dict__:
            setattr(self.__dict__[section], name, value)
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    @classmethod
    def _unknown(cls, name: str) -> ConfigError:
        close = difflib.get_close_matches(name, cls.field_names(), n=1)
        return ConfigError(f"unknown configuration field {name!r}",
                           hint=(f"did you mean {close[0]!r}? " if close else "") + f"see the {cls.__name__} fields "
                           f"in {cls.__module__}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named preset with overrides (flat names)."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown preset {name!r}", hint=f"use one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name].overrides, **overrides})

    @classmethod
    def from_dict(cls, d: dict):
        """Read :meth:`to_dict` (nested) or :meth:`to_flat` (flat, as stored in results)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(d).__name__}")
        legacy = {}
        for name, value in cls.LEGACY.items():  # a record made before the field existed meant its old behaviour
            section = cls._FIELD_SECTION.get(name)
            if name not in d and not (isinstance(d.get(section), dict) and name in d[section]):
                legacy[name] = value
        if legacy and not any(isinstance(d.get(s.SECTION), dict) for s in cls.SECTIONS):
            return cls(**{**legacy, **d})
        nested = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
        for name, value in legacy.items():
            nested.setdefault(cls._FIELD_SECTION[name], {})[name] = value
        return cls(**nested)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every flat field name, top-level ones first."""
        return list(TOP_FIELDS) + list(cls._FIELD_SECTION)

    @classmethod
    def check_of(cls, name: str) -> Check:
        """The :class:`Check` of a flat field."""
        if name in TOP_FIELDS:
            return TOP_FIELDS[name][1]
        section = cls._SECTION_CLASS[cls._FIELD_SECTION[name]]
        return {f.name: f for f in dataclasses.fields(section)}[name].metadata["check"]

    # ---------------------------------------------------------------- checks and records
    def validate(self) -> None:
        """Type and range checks of every field (layer ranges wait for the model: ``resolve``)."""
        for name, (_, check) in TOP_FIELDS.items():
            check.check(name, getattr(self, name))
        for s in self.SECTIONS:
            getattr(self, s.SECTION).validate()

    def to_dict(self) -> dict:
        """Nested JSON-able form: top-level fields, then one dict per section."""
        return {**{k: getattr(self, k) for k in TOP_FIELDS},
                **{s.SECTION: getattr(self, s.SECTION).to_dict() for s in self.SECTIONS}}

    def to_flat(self) -> dict:
        """Flat JSON-able form of every field."""
        return _plain({name: getattr(self, name) for name in self.field_names()})

    def identity(self) -> dict:
        """The flat record that identifies a run: :meth:`to_flat` without the fields whose
        :class:`Check` has ``identity=False`` (the device). It is the ``config`` record of
        run folders and ``results.json``; a folder resumes only a run with the same one.

        Example:
            >>> a, b = StudyConfig(device="cpu"), StudyConfig(device="cuda")
            >>> a.identity() == b.identity(), "device" in a.identity()
            (True, False)
            >>> StudyConfig(dtype="bfloat16").identity() == a.identity()
            False
        """
        return {k: v for k, v in self.to_flat().items() if self.check_of(k).identity}

    def __repr__(self) -> str:
        default = type(self)().to_flat()
        changed = {k: v for k, v in self.to_flat().items() if default.get(k) != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


class StudyConfig(SectionedConfig):
    """Everything that defines a gating study. Layers are ``resid_pre`` indices.

    Give fields flat (``StudyConfig(model="tiny", persona_alpha=2)``) or by section
    (``StudyConfig(steering=SteeringConfig(persona_alpha=2))``); read them either way
    (``cfg.persona_alpha`` is ``cfg.steering.persona_alpha``). ``None`` for a layer list
    means the default derived from the model's depth (see :meth:`resolve`). Defaults are
    sized to finish on a 2-core laptop CPU with the demo model;
    ``StudyConfig.preset("full")`` sweeps finer grids. The top-level fields
    (:data:`TOP_FIELDS`) are ``model`` (default ``"demo"``, see
    :func:`persona_refusal.load_chat_model`), ``bootstrap`` (resamples of restoration
    intervals), ``seed`` (bootstrap, random control directions) and ``batch_size``.

    Example:
        >>> cfg = StudyConfig.preset("smoke", model="tiny", persona_alpha=2.0)
        >>> cfg.steering.persona_alpha, cfg.n_train
        (2.0, 16)
        >>> StudyConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    prompts: PromptsConfig
    """Prompt sets and their sizes."""
    selection: SelectionConfig
    """Refusal-direction selection."""
    persona: PersonaConfig
    """Persona direction."""
    steering: SteeringConfig
    """Persona steering and the common norm."""
    sweeps: SweepConfig
    """Gating and control sweeps."""
    probes: ProbesConfig
    """Checks of the gating claims (benign control, sensitivity, persona without its refusal component)."""
    heatmap: HeatmapConfig
    """Cross-layer heatmap."""
    knockout: KnockoutConfig
    """Persona knockout."""
    patching: PatchingConfig
    """Activation patching."""
    compute: ComputeConfig
    """Device and dtype of the model."""

    SECTIONS: ClassVar[tuple[type[ConfigSection], ...]] = SECTIONS
    PRESETS: ClassVar[dict[str, Preset]] = PRESETS
    LEGACY: ClassVar[dict[str, Any]] = {"persona_balance": "first_k"}

    # ---------------------------------------------------------------- layers
    def resolve(self, n_layers: int) -> dict:
        """Concrete layer lists for a model with ``n_layers`` blocks, validated."""
        L = n_layers
        paper = paper_layers(L) if self.layer_rule == "paper" else None

        def check(name: str, layers: Sequence[int], top: int) -> list[int]:
            out = sorted({int(l) for l in layers})
            bad = [l for l in out if not 0 <= l <= top]
            if bad:
                raise ConfigError(f"{name} {bad} out of range: this model has layers 0..{top}")
            if not out:
                raise ConfigError(f"{name} is empty")
            return out

        pl = self.persona_layer if self.persona_layer is not None else (
            paper["persona_layer"] if paper else round(0.65 * L))
        if not 1 <= pl <= L - 1:
            raise ConfigError(f"persona_layer {pl} out of range: use 1..{L - 1}")
        src = self.persona_source_layer if self.persona_source_layer is not None else (
            paper["persona_source_layer"] if paper and self.persona_layer is None else pl)
        if not 0 <= src <= L - 1:
            raise ConfigError(f"persona_source_layer {src} out of range: this model has layers 0..{L - 1}")
        rl = self.refusal_layer if self.refusal_layer is not None else (paper["refusal_layer"] if paper else None)
        if rl is not None and not 0 <= rl <= L - 1:
            raise ConfigError(f"refusal_layer {rl} out of range: this model has layers 0..{L - 1}")
        cells = self.readd_cells if self.readd_cells is not None else paper_layers(L)["readd_cells"]
        cells = {name: check(f"readd_cells[{name!r}]", ls, L - 1) for name, ls in cells.items()}
        sel = layer_spec("selection_layers", self.selection_layers, L, "every:3,below:0.8")
        gl = layer_spec("gating_layers", self.gating_layers, L, "all")
        cl = layer_spec("control_layers", self.control_layers, L, "every:2")
        hp = self.heatmap_persona_layers or sorted({min(L - 1, max(1, round(f * L))) for f in (0.4, 0.65, 0.85)})
        hp = layer_spec("heatmap_persona_layers", hp, L, "all")
        hr = layer_spec("heatmap_refusal_layers", self.heatmap_refusal_layers, L, "every:4")
        w = self.knockout_window or max(2, L // 6)
        if not 1 <= w <= L:
            raise ConfigError(f"knockout_window {w} out of range 1..{L}")
        ks = self.knockout_starts if self.knockout_starts is not None else list(range(0, L - w + 1, w))
        ks = check("knockout_starts", ks, L - w)
        patch = layer_spec("patch_layers", self.patch_layers, L, f"from:{pl}")
        ppl = self.patch_position_layers if self.patch_position_layers is not None else [
            l for l in sorted({pl, pl + max(1, L // 8), pl + 2 * max(1, L // 8)}) if l < L]
        return {
            "persona_layer": pl,
            "persona_source_layer": src,
            "refusal_layer": rl,
            "readd_cells": cells,
            "judged_layers": check("judged_layers", layer_spec("judged_layers", self.judged_layers, L, "every:2"), L - 1),
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


PAPER_DEPTH = 28
"""Depth of Qwen2.5-7B-Instruct, whose layers Zhong & Li's protocol names."""


def _scaled(layer: int, n_layers: int) -> int:
    """``layer`` of a 28-block model at the same relative depth of an ``n_layers`` model
    (round half up; exact for 28 blocks)."""
    return min(n_layers - 1, int(math.floor(layer * n_layers / PAPER_DEPTH + 0.5)))


def paper_layers(n_layers: int) -> dict:
    """Zhong & Li's layers (``src/consolidated.py``, Qwen2.5-7B, 28 blocks), as
    ``resid_pre`` indices of a model with ``n_layers`` blocks.

    The paper extracts the persona vector at ``hidden_states[20]`` (``resid_pre`` 20) and
    adds it at block 20's output (``resid_pre`` 21); it takes a fixed refusal direction
    at layer 14 (last prompt token, ``resid_pre`` 14) and re-adds it at block 14's output
    (early: ``resid_pre`` 15), block 22's (late: 23) and blocks 22 + 24 together (paired
    late: 23 + 25). For other depths each paper index ``i`` becomes
    ``round(i · n_layers / 28)`` (half up), and a block output ``b`` the ``resid_pre`` of
    ``round(b · n_layers / 28) + 1``. (The paper itself used the same absolute layers on
    32-block Llama-3.1-8B; scaling keeps the relative depth instead.)

    Example:
        >>> paper_layers(28)["readd_cells"]
        {'early': [15], 'late': [23], 'paired': [23, 25]}
        >>> {k: paper_layers(24)[k] for k in ("persona_source_layer", "persona_layer", "refusal_layer")}
        {'persona_source_layer': 17, 'persona_layer': 18, 'refusal_layer': 12}
    """
    L = n_layers

    def out_of(block: int) -> int:  # the resid_pre that block's output is
        return min(L - 1, _scaled(block, L) + 1)

    src = _scaled(20, L)
    return {"persona_source_layer": src, "persona_layer": min(L - 1, src + 1), "refusal_layer": _scaled(14, L),
            "readd_cells": {"early": [out_of(14)], "late": [out_of(22)],
                            "paired": sorted({out_of(22), out_of(24)})}}


_NEGATIVE_LAYER = ("layers are numbered from 0 in every layer flag and spec (a list, from:N); negative numbers do "
                   "not count from the end: use 0..L-1")


def layer_spec(name: str, spec: Any, n_layers: int, default: str | None = None) -> list[int]:
    """Resolve a layer list or a spec string (``all``, ``every:N``, ``from:N``, ``below:F``).

    Example:
        >>> layer_spec("gating_layers", "every:4,from:8", 24)
        [8, 12, 16, 20]
    """
    if spec is None:
        spec = default
    if not isinstance(spec, str):
        negative = [l for l in spec if isinstance(l, int) and l < 0]
        if negative:
            raise ConfigError(f"{name} {negative}: a negative number is never a layer", hint=_NEGATIVE_LAYER)
        return [int(l) for l in spec]
    layers = list(range(n_layers))
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kind, _, arg = part.partition(":")
        try:
            if kind == "all" and not arg:
                continue
            if kind == "every":
                step = int(arg)
                if step < 1:
                    raise ConfigError(f"{name}: every:{arg} needs a step of at least 1", hint="use every:N with N >= 1")
                layers = [l for l in layers if l % step == 0]
            elif kind == "from":
                if int(arg) < 0:
                    raise ConfigError(f"{name}: from:{arg} names a negative layer", hint=_NEGATIVE_LAYER)
                layers = [l for l in layers if l >= int(arg)]
            elif kind == "below":
                frac = float(arg)
                if not math.isfinite(frac):
                    raise ValueError(arg)
                if frac < 0:
                    raise ConfigError(f"{name}: below:{arg} is a negative fraction of the depth",
                                      hint="use below:F with F between 0 and 1, e.g. below:0.8")
                layers = [l for l in layers if l < frac * n_layers]
            else:
                raise ValueError(kind)
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(f"{name}: cannot read layer spec {part!r}", hint=f"use {LAYER_SPEC_HELP}") from None
    return layers


POSITION_SPEC_HELP = "all (every post-instruction position), last:N, or a list such as -3,-2,-1 (write --flag=-1)"


def position_spec(name: str, spec: Any, allowed: Sequence[int]) -> list[int]:
    """Resolve a position list or spec (``all``, ``last:N``) against the positions a model
    allows (its post-instruction positions, e.g. ``[-5, …, -1]``), checking the range.

    Example:
        >>> position_spec("front_positions", "last:2", [-5, -4, -3, -2, -1])
        [-2, -1]
    """
    allowed = sorted(allowed)
    if spec is None or spec == "all":
        return allowed
    if isinstance(spec, str):
        kind, _, arg = spec.strip().partition(":")
        try:
            if kind != "last":
                raise ValueError(kind)
            n = int(arg)
        except ValueError:
            raise ConfigError(f"{name}: cannot read position spec {spec!r}", hint=f"use {POSITION_SPEC_HELP}") from None
        if not 1 <= n:
            raise ConfigError(f"{name}: last:{arg} needs at least 1 position", hint="use last:N with N >= 1")
        return allowed[-n:]
    out = sorted({int(p) for p in spec})
    bad = [p for p in out if p not in allowed]
    if bad:
        raise ConfigError(f"{name} position {bad[0]} is out of range: this model's post-instruction positions are "
                          f"{allowed[0]}..{allowed[-1]}", hint=f"use positions between {allowed[0]} and -1")
    return out


def resolve_device(device: str | None) -> str:
    """The torch device a model is loaded on: ``"auto"`` (or ``None``) is ``"cuda"`` when
    CUDA is available, else ``"cpu"``; a device this machine does not have is a one-line
    :class:`ConfigError` (checked before a model loads, instead of a torch traceback).

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("auto") in ("cuda", "cpu")
        True
    """
    device = "auto" if device is None else device
    Check("device").check("device", device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available: torch {torch.__version__} finds no CUDA GPU on "
                              "this machine", hint="use --device cpu, or auto: CUDA when there is one, else the CPU")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(f"device {device!r} is not available: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''}", hint=f"use cuda:0..cuda:{count - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine",
                          hint="use --device cpu, or auto: CUDA when there is one, else the CPU")
    return device


# ============================================================================ command line
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _layers(text: str):
    if any(c.isalpha() for c in text):
        return text  # a spec such as "all", "every:2", "from:12"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layers or a spec, got {text!r}") from None


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _positions(text: str):
    if any(c.isalpha() for c in text):
        return text  # a spec such as "all", "last:3"
    return _ints(text)


def _count_or_all(text: str):
    if text.strip() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or all, got {text!r}") from None


def _cells(text: str) -> dict[str, list[int]]:
    """``late=20,paired=20+22`` → ``{"late": [20], "paired": [20, 22]}``."""
    out: dict[str, list[int]] = {}
    for part in _strs(text):
        name, eq, layers = part.partition("=")
        try:
            if not eq:
                raise ValueError(part)
            out[name.strip()] = [int(x) for x in layers.split("+") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=LAYER[+LAYER…] cells such as late=20,paired=20+22, "
                                             f"got {part!r}") from None
    return out


_ARG_TYPES = {"int": int, "float": float, "strengths": _floats, "ints": _ints, "layers": _layers, "positions": _ints,
              "position_spec": _positions, "count_or_all": _count_or_all, "choices": _strs, "strs": _strs, "cells": _cells, "str": str, "device": str, "judge": str}


def add_flags(parser: argparse.ArgumentParser, config: type[SectionedConfig] | None = None) -> None:
    """One ``--flag`` per field of ``config`` (default :class:`StudyConfig`; ``persona_alpha``
    → ``--persona-alpha``), derived from the fields' :class:`Check`; every flag defaults to
    ``None`` (not given)."""
    config = config or StudyConfig
    for name in config.field_names():
        check = config.check_of(name)
        if not check.flag:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = check.help + (f" ({LAYER_SPEC_HELP})" if check.kind == "layers" else
                                  f" ({POSITION_SPEC_HELP})" if check.kind == "position_spec" else "")
        if check.kind == "bool":
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        elif check.kind == "choice":
            parser.add_argument(flag, dest=name, choices=list(check.choices), help=help_text)
        elif check.kind == "path":
            parser.add_argument(flag, dest=name, metavar="PATH", help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=_ARG_TYPES.get(check.kind), help=help_text)


def flags_to_fields(args: argparse.Namespace, config: type[SectionedConfig] | None = None) -> dict:
    """The fields of ``config`` (default :class:`StudyConfig`) given as flags (those not ``None``)."""
    out = {}
    for name in (config or StudyConfig).field_names():
        v = getattr(args, name, None)
        if v is not None:
            out[name] = v
    return out
