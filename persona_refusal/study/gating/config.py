"""The gating study's configuration: one dataclass per concern, checked in one place.

Context
-------
A gating study is defined by which prompts it reads, how it picks the refusal direction,
how it builds and scales the persona direction, and which layers each sweep visits. Each
concern is one small dataclass (:class:`PromptsConfig`, :class:`SelectionConfig`,
:class:`PersonaConfig`, :class:`SteeringConfig`, :class:`SweepConfig`,
:class:`HeatmapConfig`, :class:`KnockoutConfig`, :class:`PatchingConfig`, and
:class:`~persona_refusal.study.config.ComputeConfig` for the device and dtype), nested in
:class:`StudyConfig`. Every field carries a :class:`~persona_refusal.study.config.Check` in
its metadata — its kind, range and help text — and that one table drives three things:
validation (:meth:`StudyConfig.validate`, run before a model loads), the command-line flags
(:func:`~persona_refusal.study.config.add_flags`), and the error messages.

Field names are unique across sections, so a config is also addressed *flat*:
``StudyConfig(model="tiny", n_train=8, persona_alpha=2)`` routes each name to its section,
``cfg.persona_alpha`` reads it back, and :meth:`StudyConfig.to_flat` is the flat record.
:meth:`StudyConfig.identity` — the flat record without the fields whose ``Check`` says
``identity=False`` (the device: where a run computes, not what) — is what run folders and
``results.json`` store (schema 1) and what a resumed run must match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from persona_refusal.errors import ConfigError
from persona_refusal.study.config import (JUDGE_CHECK, MAX_STRENGTH, Check, ComputeConfig, ConfigSection, Preset,
                                          SectionedConfig, canonical_judge, layer_spec, setting)

__all__ = [
    "PromptsConfig", "SelectionConfig", "PersonaConfig", "SteeringConfig", "SweepConfig", "ProbesConfig",
    "HeatmapConfig", "KnockoutConfig", "PatchingConfig", "SECTIONS", "StudyConfig", "PRESETS", "paper_layers",
    "PAPER_DEPTH",
]

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

SECTIONS: tuple[type[ConfigSection], ...] = (PromptsConfig, SelectionConfig, PersonaConfig, SteeringConfig, SweepConfig,
                                        ProbesConfig, HeatmapConfig, KnockoutConfig, PatchingConfig, ComputeConfig)

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

