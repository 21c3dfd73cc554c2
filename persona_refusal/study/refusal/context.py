"""What the refusal study's stages share: the prompt sets, the unedited reference passes,
and the edits built from the chosen direction.

Context
-------
:class:`RefusalContext` is a :class:`~persona_refusal.study.context.RunContext` (model,
configuration, run folder, judges, judged generation, one-pass forward measurements) with
the refusal study's prompt roles (:func:`refusal_prompts`, read before the model loads so
a bad file fails in a second) and one cached unedited pass per prompt list
(:meth:`RefusalContext.reference`): its logits are the reference of every KL, its residual
stream the start of every run whose edits begin mid-model (an addition at layer ``l``
runs blocks ``l …`` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from persona_refusal.errors import ConfigError
from persona_refusal.interventions import Intervention
from persona_refusal.prompts import PromptSet, bundled, load_borderline, load_prompts
from persona_refusal.study.context import Forward, RunContext
from persona_refusal.study.refusal.config import RefusalConfig

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["RefusalContext", "refusal_prompts", "ROLES"]

ROLES = ("train_harmful", "train_harmless", "val_harmful", "val_harmless", "val_borderline", "test_harmful",
         "test_harmless", "test_borderline")
"""The prompt sets of a refusal study, by role."""


def refusal_prompts(config: RefusalConfig) -> dict[str, PromptSet]:
    """The refusal study's prompt sets (given files, else the bundled splits), trimmed to the
    configured sizes; the val sets are kept whole (the stages read their first ``n_val`` /
    ``n_front``). Cheap: the CLI calls it before loading the model."""
    c = config

    def get(path, label, split, n=None, field=None):
        if label == "borderline":
            ps = load_borderline(path) if path else bundled(label, split)
        else:
            ps = load_prompts(path, label=label) if path else bundled(label, split)
        return ps.take(n, field, f"--{field.replace('_', '-')}") if field else ps

    sets = {
        "train_harmful": get(c.train_harmful, "harmful", "train", c.n_train, "n_train"),
        "train_harmless": get(c.train_harmless, "harmless", "train", c.n_train, "n_train"),
        "val_harmful": get(c.val_harmful, "harmful", "val"),
        "val_harmless": get(c.val_harmless, "harmless", "val"),
        "val_borderline": get(c.val_borderline, "borderline", "val"),
        "test_harmful": get(c.test_harmful, "harmful", "test", c.n_test, "n_test"),
        "test_harmless": get(c.test_harmless, "harmless", "test", c.n_test, "n_test"),
        "test_borderline": get(c.borderline, "borderline", "test", c.n_borderline, "n_borderline"),
    }
    for field, role, flag in (("n_val", "val_harmful", "--n-val"), ("n_val", "val_harmless", "--n-val"),
                              ("n_front", "val_harmful", "--n-front")):
        n, have = getattr(c, field), len(sets[role])
        if n > have:
            raise ConfigError(f"{field} {n} exceeds the {have} {role.replace('_', ' ')} prompts",
                              hint=f"lower {field} ({flag}) or give more {role.replace('_', ' ')} prompts")
    return sets


class RefusalContext(RunContext):
    """The shared state of one refusal-study run.

    Attributes (besides :class:`~persona_refusal.study.context.RunContext`'s):
        layers: ``front_layers``, ``front_positions`` and ``max_layer`` resolved for this model.
        prompts: the sets of :data:`ROLES`.
    """

    def __init__(self, chat_model: "ChatModel", config: RefusalConfig, out, **kwargs) -> None:
        self._references: dict[tuple[tuple[str, ...], tuple[int, ...]], Forward] = {}
        super().__init__(chat_model, config, out, **kwargs)

    def resolve_layers(self) -> dict:
        return self.cfg.resolve(self.cm.n_layers, self.cm.post_instruction_positions)

    def read_prompts(self) -> dict[str, PromptSet]:
        return refusal_prompts(self.cfg)

    def check_inputs(self) -> None:
        """Every prompt fits the context window with the reply it will get; the front has a
        layer whose candidates can be non-zero."""
        c = self.cfg
        if not [l for l in self.layers["front_layers"] if l > 0]:
            raise ConfigError("front_layers [0] holds no candidate: at layer 0 every post-instruction position is a "
                              "chat-template token shared by all prompts, so every difference of means there is zero",
                              hint="add later layers, e.g. --front-layers all")
        self.check_lengths({"val_harmful": c.front_max_new_tokens, "test_harmful": c.max_new_tokens,
                            "test_harmless": c.max_new_tokens, "test_borderline": c.max_new_tokens},
                           {"val_harmless": c.n_val})

    # ---------------------------------------------------------------- prompts
    def val(self, side: str) -> list[str]:
        """The first ``n_val`` val prompts of ``side`` (``harmful``/``harmless``): the front's first-token prompts."""
        return list(self.prompts[f"val_{side}"])[: self.cfg.n_val]

    @property
    def front_prompts(self) -> list[str]:
        """The first ``n_front`` harmful val prompts: the front's judged prompts."""
        return list(self.prompts["val_harmful"])[: self.cfg.n_front]

    # ---------------------------------------------------------------- unedited passes
    def reference(self, prompts: Sequence[str], layers: Sequence[int] = ()) -> Forward:
        """The unedited pass over ``prompts`` (logits kept; the residual stream at ``layers``),
        computed once per run and list of prompts."""
        key = (tuple(prompts), tuple(sorted(set(layers))))
        if key not in self._references:
            self._references[key] = self.forward(self.plan(prompts), [], capture=key[1], logits=True)
        return self._references[key]

    def from_layer(self, prompts: Sequence[str], interventions: Sequence[Intervention], layer: int,
                   *, logits: bool = False) -> Forward:
        """``prompts`` under edits that act at ``layer`` and later, run from the unedited
        residual stream at ``layer`` (block 0: from the embedding)."""
        if layer == 0:
            return self.forward(self.plan(prompts), interventions, logits=logits)
        have = [r for (ps, ls), r in self._references.items() if ps == tuple(prompts) and layer in ls]
        ref = have[0] if have else self.reference(prompts, [layer])
        return self.forward(self.plan(prompts), interventions, start_layer=layer, start_resid=ref.resid[layer],
                            logits=logits)
