"""The refusal study's configuration: one dataclass per concern, checked in one place.

Context
-------
The refusal study (``persona-refusal refusal``) measures every diff-in-means candidate
on the val split, chooses one by a named rule, calibrates the addition strength on val,
and reports directional ablation, affine concept editing (ACE) and activation addition
on the test split. Its configuration has the shape of the gating study's
(:class:`~persona_refusal.study.config.SectionedConfig`): top-level ``model``,
``bootstrap``, ``seed`` and ``batch_size``, then one section per concern
(:class:`RefusalPromptsConfig`, :class:`FrontConfig`, :class:`RuleConfig`,
:class:`EditsConfig`, :class:`~persona_refusal.study.config.ComputeConfig`), field names
unique across sections, every field checked by its :class:`Check` (which also makes its
``--flag``), and two presets, ``smoke`` and ``default``.

Sizes (defaults, demo model): the first-token front covers every post-instruction
position at every layer on ``n_val`` = 12 val prompts per side; judged replies
(``front_max_new_tokens`` = 64 tokens, early stopping) go to ``n_front`` = 16 harmful val
prompts for the ``front_judged`` = 8 most promising candidates and each position's
per-layer directions; the test split reports ``n_test`` = 48 harmful and harmless prompts
and ``n_borderline`` = 32 borderline ones (``--n-test 100 --n-borderline 64`` for all of
them; ``--front-judged all --n-front 32 --n-val 32`` for the full grid). "Cost per stage" in
docs/reference/refusal-study.md estimates the default at about half an hour on a 2-core CPU
(at 43 decoded tokens/s), most of it decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from persona_refusal.errors import ConfigError
from persona_refusal.selection import RULES
from persona_refusal.study.config import (JUDGE_CHECK, Check, ComputeConfig, ConfigSection, Preset,
                                          SectionedConfig, canonical_judge, layer_spec, position_spec, setting)

__all__ = ["RefusalPromptsConfig", "FrontConfig", "RuleConfig", "EditsConfig", "RefusalConfig", "REFUSAL_PRESETS"]


@dataclass
class RefusalPromptsConfig(ConfigSection):
    """Which prompts the refusal study reads, and how many of each."""

    SECTION: ClassVar[str] = "prompts"
    train_harmful: str | None = setting(None, Check("path", "train harmful prompts (csv/json/jsonl/txt)", optional=True))
    """Harmful prompts of the diff-in-means grid (path; default: bundled train split)."""
    train_harmless: str | None = setting(None, Check("path", "train harmless prompts", optional=True))
    """Harmless prompts of the diff-in-means grid (default: bundled train split)."""
    val_harmful: str | None = setting(None, Check("path", "val harmful prompts (the front, selection)", optional=True))
    """Harmful prompts the front and the selection rules read (default: bundled val split)."""
    val_harmless: str | None = setting(None, Check("path", "val harmless prompts (KL, induce, calibration)",
                                                   optional=True))
    """Harmless prompts of the front's KL and induce scores and of the addition calibration
    (default: bundled val split)."""
    val_borderline: str | None = setting(None, Check("path", "val borderline prompts (calibration record)",
                                                     optional=True))
    """Borderline prompts whose first-token refusal the addition calibration records at each
    strength (default: bundled borderline val split; an XSTest CSV keeps its safe prompts)."""
    test_harmful: str | None = setting(None, Check("path", "test harmful prompts (reported)", optional=True))
    """Harmful prompts the edits are reported on (default: bundled test split)."""
    test_harmless: str | None = setting(None, Check("path", "test harmless prompts (reported)", optional=True))
    """Harmless prompts the edits are reported on (default: bundled test split)."""
    borderline: str | None = setting(None, Check("path", "test borderline prompts, e.g. an XSTest CSV (its safe "
                                                 "prompts are kept)", optional=True))
    """Borderline prompts — safe requests that sound unsafe — the edits are reported on
    (default: the bundled borderline test split). An XSTest CSV (``prompt`` with ``label``
    or ``type`` columns) keeps its safe prompts only."""
    n_train: int | None = setting(None, Check("int", "train prompts per side (default: all)", optional=True, low=1))
    """Train prompts per side (``None``: all, 128 bundled)."""
    n_val: int = setting(12, Check("int", "val prompts per side of the first-token front scores", low=1))
    """Val prompts per side whose first-token scores every candidate gets (bypass, KL, induce)."""
    n_front: int = setting(16, Check("int", "harmful val prompts answered under each judged candidate", low=1))
    """The first ``n_front`` harmful val prompts get generated, judged replies under each
    judged candidate's ablation."""
    n_test: int | None = setting(48, Check("int", "test prompts per side (default 48; all: 100 bundled)", optional=True,
                                           low=1))
    """Harmful and harmless test prompts per side (``None``: all)."""
    n_borderline: int | None = setting(32, Check("int", "test borderline prompts (default 32; all: 64 bundled)",
                                                 optional=True, low=1))
    """Borderline test prompts (``None``: all)."""
    system_prompt: str | None = setting(None, Check("str", "system prompt of every prompt (default: the chat "
                                                    "template's own)", optional=True))
    """The system prompt every prompt is formatted with (``None``: the template's default)."""


@dataclass
class FrontConfig(ConfigSection):
    """The refusal-vs-KL front: which candidates are measured, and which get judged replies."""

    SECTION: ClassVar[str] = "front"
    front_positions: list[int] | str | None = setting(None, Check("position_spec", "candidate positions of the front",
                                                                  optional=True))
    """Positions (from the end of the prompt) of the candidates (default ``"all"``: every
    post-instruction position of the chat template; ``"last:N"``, or a list)."""
    front_layers: list[int] | str | None = setting(None, Check("layers", "candidate layers of the front (default all)",
                                                               optional=True))
    """Layers of the candidates (default: every layer)."""
    front_judged: int | str = setting(8, Check("count_or_all", "candidates whose ablation gets judged replies "
                                                              "(or all)", low=0))
    """How many candidates get generated, judged replies (``"all"``: every one). They are
    chosen from the first-token scores: the ``arditi`` rule's choice, the lowest bypass
    within the KL budget, then the first-token Pareto front and the lowest bypass scores
    within the budget, then the rest by bypass. Each position's per-layer directions are
    judged as well."""
    front_max_new_tokens: int = setting(64, Check("int", "reply length of the front's judged replies", low=1))
    """Reply length of the front's judged replies (the study's protocol: at least 64)."""


@dataclass
class RuleConfig(ConfigSection):
    """How the direction is chosen from the front (named rules), with their parameters."""

    SECTION: ClassVar[str] = "selection"
    selection_rule: str = setting("kl_budget", Check("choice", "the rule that chooses the direction", choices=RULES))
    """``"kl_budget"``: lowest judged refusal within :attr:`kl_budget`; ``"arditi"``: Arditi
    et al.'s filters on first-token scores; ``"knee"``: the knee of the judged front (see
    :func:`persona_refusal.selection.apply_rule`). Every rule's choice is recorded; this one
    is used on the test split. When it chooses nothing, the knee is used (recorded)."""
    kl_budget: float = setting(0.2, Check("float", "kl_budget rule: largest KL (nats) of ablation on harmless val",
                                          low=0))
    """The ``kl_budget`` rule's budget, nats of KL on harmless val prompts (fixed a priori:
    the study's goal is judged refusal ≤ 10% at KL ≤ 0.2)."""
    max_degenerate_rise: float = setting(0.1, Check("float", "judged rules: largest rise of the degenerate share over "
                                                             "the unedited replies", low=0, high=1))
    """``kl_budget`` and ``knee`` leave out a candidate whose ablated replies are degenerate
    more often than the unedited replies by more than this."""
    kl_threshold: float = setting(0.1, Check("float", "arditi rule: largest KL (nats)", low=0))
    """Arditi et al.'s KL filter."""
    induce_threshold: float = setting(0.0, Check("float", "arditi rule: smallest induce score"))
    """Arditi et al.'s induce filter (mean refusal log-odds under addition, coefficient 1)."""
    max_layer_fraction: float = setting(0.8, Check("float", "arditi rule: candidates at layers >= this fraction of the "
                                                            "depth are left out", low=0, high=1))
    """Arditi et al.'s layer filter."""
    rule_fallback: str | None = setting("relative", Check("choice", "arditi rule: fallback when no candidate passes",
                                                          optional=True, choices=("relative",)))
    """``"relative"``: addition need only beat the unedited harmless score; ``None``: none."""
    test_rules: list[str] = setting(list(RULES), Check("choices", "rules whose choices are also ablated on the test "
                                                                  "split", choices=RULES), factory=True)
    """Rules whose choice, when it differs from the used direction, is also ablated on the
    harmful test prompts (judged) with its KL on the harmless ones."""


@dataclass
class EditsConfig(ConfigSection):
    """The test-split comparison of ablation, ACE and addition; judging."""

    SECTION: ClassVar[str] = "edits"
    add_coeffs: list[float] = setting([1.0, 2.0, 4.0, 8.0, 16.0], Check(
        "strengths", "addition strengths tried on harmless val (ascending)", nonempty=True), factory=True)
    """Activation addition strengths ``c`` (``x + c·r`` at the direction's layer) calibrated
    on the val split: the smallest whose mean first-token refusal log-odds on harmless val
    prompts reaches 0, else the one with the highest."""
    max_new_tokens: int = setting(64, Check("int", "reply length of the test split's judged replies", low=1))
    """Reply length of the test split's judged replies."""
    judge: str = setting("strict", JUDGE_CHECK)
    """The judge of the headline rates (``strict``, ``lenient``, ``model[:NAME]``); both
    phrase judges' labels are always recorded."""
    early_stop: bool = setting(True, Check("bool", "judged replies stop once every judge's label is final"))
    """Stop a judged reply once every judge's label is final (labels unchanged, replies shorter)."""

    def __post_init__(self) -> None:
        canonical_judge(self)


REFUSAL_PRESETS: dict[str, Preset] = {
    "default": Preset({}, doc="the front over every post-instruction position and layer, judged val subset, test "
                              "split; sized for a 2-core laptop CPU with the demo model"),
    "smoke": Preset({"n_train": 16, "n_val": 6, "n_front": 4, "n_test": 6, "n_borderline": 6,
                     "front_positions": "last:2", "front_layers": "every:3", "front_judged": 3,
                     "front_max_new_tokens": 12, "max_new_tokens": 12, "add_coeffs": [1.0, 4.0], "bootstrap": 200},
                    doc="every stage on a few prompts and candidates (plumbing check)"),
}
"""The refusal study's presets."""


class RefusalConfig(SectionedConfig):
    """Everything that defines a refusal study. Layers are ``resid_pre`` indices.

    Fields can be given flat or by section, as for
    :class:`~persona_refusal.study.gating.StudyConfig`; ``--flag`` per field on
    ``persona-refusal refusal``.

    Example:
        >>> cfg = RefusalConfig.preset("smoke", model="tiny", kl_budget=0.5)
        >>> cfg.selection.kl_budget, cfg.n_front
        (0.5, 4)
        >>> RefusalConfig.from_dict(cfg.to_flat()) == cfg
        True
    """

    prompts: RefusalPromptsConfig
    """Prompt sets and their sizes."""
    front: FrontConfig
    """The candidates of the front and its judged subset."""
    selection: RuleConfig
    """The selection rules."""
    edits: EditsConfig
    """The test-split edits and judging."""
    compute: ComputeConfig
    """Device and dtype of the model."""

    SECTIONS: ClassVar[tuple[type[ConfigSection], ...]] = (RefusalPromptsConfig, FrontConfig, RuleConfig, EditsConfig,
                                                           ComputeConfig)
    PRESETS: ClassVar[dict[str, Preset]] = REFUSAL_PRESETS

    def resolve(self, n_layers: int, positions: Sequence[int] = (-1,)) -> dict[str, Any]:
        """Concrete candidate layers and positions for a model with ``n_layers`` blocks and
        these post-instruction ``positions``, validated.

        Example:
            >>> RefusalConfig(front_layers="every:8", front_positions="last:2").resolve(24, [-3, -2, -1])
            {'front_layers': [0, 8, 16], 'front_positions': [-2, -1], 'max_layer': 19.200000000000003}
        """
        layers = sorted({int(l) for l in layer_spec("front_layers", self.front_layers, n_layers, "all")})
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise ConfigError(f"front_layers {bad} out of range: this model has layers 0..{n_layers - 1}")
        if not layers:
            raise ConfigError("front_layers is empty", hint="give at least one layer")
        return {"front_layers": layers, "front_positions": position_spec("front_positions", self.front_positions, positions),
                "max_layer": self.max_layer_fraction * n_layers}
