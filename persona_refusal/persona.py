"""The compliant-persona direction: system-prompt personas, in-character rollouts, diff-in-means.

Context
-------
A chat model's *persona* — the character the assistant plays — can be steered like any
other concept. Following Zhong & Li (2026, "Refusal lives downstream of persona"), the
compliant-persona direction contrasts two families of system prompts:

* **compliant**: the assistant exists to serve the user's stated request without
  judgment; refusing is a failure;
* **refuser**: a paranoid safety enforcer that, when in doubt, always refuses.

Each system prompt is paired with the same probe questions (mostly gray-area requests)
and the model answers, greedily or by sampling (``samples`` replies per pair at a
``temperature``, seeded). Only *in-character* rollouts count: a compliant rollout must
not refuse, a refuser rollout must refuse, and both must be coherent (the package's judge;
the paper used a GPT-4o trait/coherence judge). Every in-character rollout is kept. The
direction at every layer is the difference of the mean residual stream at the last prompt
token, compliant − refuser, so *adding* it pushes the model toward compliance.
``method="response_avg"`` averages over the response tokens instead.

How the kept rollouts of a side are averaged (``balance``):

* ``"prompt"`` (default): each system prompt that produced at least one in-character
  rollout weighs the same; within a prompt, its rollouts weigh the same. A persona family
  is a set of system prompts, and the direction should stand for the family, not for
  whichever prompt holds character on the most questions. (The paper keeps every rollout
  its judge passes, from about 200 samples per instruction: with that many samples nearly
  every instruction contributes, so its mean is close to a per-prompt one; with a few
  greedy rollouts per prompt it is not.)
* ``"rollout"``: each kept rollout weighs the same (the paper's rule taken literally).
* ``"first_k"``: only the first ``k`` in-character rollouts of each side in list order
  (``k`` = the smaller side's count), as the package's first protocol did. Rollouts are
  ordered by system prompt, so whole prompts of the larger side drop out; kept only so
  that runs made with it can be reproduced.

The prompts ship with the package (:func:`persona_refusal.prompts.personas`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from persona_refusal.checks import checked
from persona_refusal.activations import plan_batches, run_plan
from persona_refusal.directions import LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import Judge, generate_details, judge_responses
from persona_refusal.prompts import Personas, personas as bundled_personas, prompt_hash

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["Rollout", "PersonaRollouts", "persona_rollouts", "persona_direction", "BALANCES"]

BALANCES = ("prompt", "rollout", "first_k")
"""How a side's kept rollouts are averaged into its mean (see the module docstring)."""

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One reply of the model under one persona system prompt.

    Example:
        >>> Rollout("compliant", 0, 3, "Sure, here is how.", "compliance", True).to_dict()["in_character"]
        True
    """

    side: str
    """``"compliant"`` or ``"refuser"``."""
    system_index: int
    """Index of the system prompt within its side."""
    question_index: int
    """Index of the probe question."""
    reply: str
    """The greedy reply."""
    label: str
    """Judge label: refusal, compliance or degenerate."""
    in_character: bool
    """Compliant side: label is compliance; refuser side: label is refusal."""
    kept: bool = False
    """Whether it entered the direction (in character; with ``balance="first_k"``, also
    among the first ``k`` of its side)."""
    sample: int = 0
    """Index of the sample for this (system prompt, question) pair (0 when greedy)."""

    def to_dict(self) -> dict:
        """JSON-able form (as saved in ``directions/persona_rollouts.json``)."""
        return dict(self.__dict__)


@checked
@dataclass(eq=False)
class PersonaRollouts:
    """Rollouts under both persona families and their prompt-pass activations.

    Example:
        >>> ro = persona_rollouts(load_chat_model("tiny"), n_questions=1, max_new_tokens=4, filter="none", progress=False)
        >>> len(ro.rollouts), tuple(ro.activations.shape)
        (16, (16, 4, 64))
    """

    rollouts: list[Rollout]
    """Every rollout, compliant side first."""
    activations: torch.Tensor
    """``[n_rollouts, n_layers, d_model]`` resid_pre at the last prompt token."""
    layers: tuple[int, ...]
    """Layers of ``activations``."""
    filter: str
    """``"judge"`` (in-character only) or ``"none"`` (all rollouts)."""
    provenance: dict = field(default_factory=dict)
    """Prompt hashes and settings."""
    balance: str = "prompt"
    """How kept rollouts are averaged: ``"prompt"``, ``"rollout"`` or ``"first_k"`` (module docstring)."""
    n_systems: dict = field(default_factory=dict)
    """Number of system prompts per side (for per-prompt counts that include prompts with none kept)."""

    def kept(self, side: str) -> list[int]:
        """Indices of the rollouts of ``side`` (``"compliant"``/``"refuser"``) that entered the direction."""
        return [i for i, r in enumerate(self.rollouts) if r.side == side and r.kept]

    def __repr__(self) -> str:
        parts = []
        for side in ("compliant", "refuser"):
            rs = [r for r in self.rollouts if r.side == side]
            parts.append(f"{side}: {len(rs)} rollouts, {sum(r.in_character for r in rs)} in character, "
                         f"{sum(r.kept for r in rs)} kept")
        shape = " × ".join(str(n) for n in self.activations.shape)
        return (f"PersonaRollouts({'; '.join(parts)}; filter={self.filter!r}, balance={self.balance!r}; "
                f"activations [{shape}])")

    def weights(self, side: str) -> torch.Tensor:
        """Weight of each kept rollout of ``side`` in its side's mean (they sum to 1), in the
        order of :meth:`kept`: equal per system prompt with ``balance="prompt"``, equal per
        rollout otherwise.

        Example:
            >>> ro = persona_rollouts(load_chat_model("tiny"), n_questions=2, max_new_tokens=4, filter="none", progress=False)
            >>> float(ro.weights("compliant").sum())
            1.0
        """
        idx = self.kept(side)
        if not idx:
            return torch.zeros(0, dtype=torch.float64)
        if self.balance != "prompt":
            return torch.full((len(idx),), 1.0 / len(idx), dtype=torch.float64)
        systems = [self.rollouts[i].system_index for i in idx]
        count = {s: systems.count(s) for s in set(systems)}
        return torch.tensor([1.0 / (len(count) * count[s]) for s in systems], dtype=torch.float64)

    def per_prompt(self, side: str) -> list[int]:
        """Kept rollouts of each system prompt of ``side``, by system prompt index."""
        n = self.n_systems.get(side) or 1 + max((r.system_index for r in self.rollouts if r.side == side), default=-1)
        counts = [0] * n
        for r in self.rollouts:
            if r.side == side and r.kept:
                counts[r.system_index] += 1
        return counts

    def summary(self) -> dict:
        """Counts per side: rollouts, in character, kept, and judge labels.

        Example:
            >>> ro = persona_rollouts(load_chat_model("tiny"), n_questions=1, max_new_tokens=4,
            ...                       filter="none", progress=False)
            >>> ro.summary()["compliant"]["n"]
            8
        """
        out = {"filter": self.filter, "balance": self.balance,
               "samples": self.provenance.get("samples", 1), "temperature": self.provenance.get("temperature", 0.0)}
        for side in ("compliant", "refuser"):
            rs = [r for r in self.rollouts if r.side == side]
            out[side] = {
                "n": len(rs),
                "in_character": sum(r.in_character for r in rs),
                "kept": sum(r.kept for r in rs),
                "labels": {lab: sum(r.label == lab for r in rs) for lab in ("refusal", "compliance", "degenerate")},
                "per_prompt": self.per_prompt(side),
            }
        return out


def persona_rollouts(
    chat_model: "ChatModel",
    prompts: Personas | None = None,
    *,
    n_questions: int | None = None,
    max_new_tokens: int = 24,
    filter: str = "judge",
    balance: str = "prompt",
    samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    min_per_side: int = 4,
    judge: Judge | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> PersonaRollouts:
    """Generate rollouts under every compliant and refuser system prompt.

    Activations at the last prompt token are kept from the same forward pass as the
    generation (no second pass).

    Args:
        prompts: persona prompts (default: the bundled ones).
        n_questions: use the first ``n`` probe questions (default: all).
        max_new_tokens: reply length (refusals are judged on the reply).
        filter: ``"judge"`` keeps in-character rollouts; ``"none"`` keeps all (for models
            too small to stay in character, such as ``"tiny"``).
        balance: how a side's kept rollouts are averaged: ``"prompt"`` (each system prompt
            the same), ``"rollout"`` (each rollout the same) or ``"first_k"`` (the first
            ``k`` in-character rollouts per side; the package's first protocol).
        samples: replies per (system prompt, question): 1 is greedy decoding; more are
            sampled at ``temperature`` from a generator seeded with ``seed``.
        temperature: sampling temperature (``samples`` > 1 only).
        min_per_side: with ``filter="judge"``, fewer in-character rollouts per side is an error.

    Raises:
        ConfigError: too few in-character rollouts.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> # filter="none": the random tiny model cannot stay in character; real models use "judge"
        >>> ro = persona_rollouts(cm, n_questions=2, max_new_tokens=4, filter="none", progress=False)
        >>> ro.summary()["compliant"]["n"], len(ro.kept("refuser"))
        (16, 16)
    """
    if filter not in ("judge", "none"):
        raise ConfigError(f"unknown persona filter {filter!r}", hint="use 'judge' or 'none'")
    if balance not in BALANCES:
        raise ConfigError(f"unknown persona balance {balance!r}", hint=f"use {', '.join(BALANCES)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"samples must be a whole number of at least 1, got {samples!r}")
    if samples > 1 and not (isinstance(temperature, (int, float)) and 0 < temperature <= 10):
        raise ConfigError(f"temperature must be a number in (0, 10], got {temperature!r}")
    p = prompts or bundled_personas()
    questions = list(p.questions[:n_questions] if n_questions else p.questions)
    if not questions or not p.compliant or not p.refuser:
        raise ConfigError("persona rollouts need questions and system prompts on both sides")
    layers = tuple(range(chat_model.n_layers))
    capture = {chat_model.hook_name(l): [-1] for l in layers}
    rollouts: list[Rollout] = []
    acts: list[torch.Tensor] = []
    for side, systems in (("compliant", p.compliant), ("refuser", p.refuser)):
        texts, meta = [], []
        for si, system in enumerate(systems):
            formatted = chat_model.format(questions, system=system)
            for k in range(samples):
                texts.extend(formatted)
                meta.extend((si, qi, k) for qi in range(len(questions)))
        plan = plan_batches(chat_model, texts, batch_size=batch_size, batch_tokens=4096, reserve=max_new_tokens)
        sampling = {} if samples == 1 else {"temperature": float(temperature),
                                            "seed": seed + (0 if side == "compliant" else 1)}
        gen = generate_details(chat_model, plan, max_new_tokens=max_new_tokens, capture=capture,
                               desc=f"persona rollouts ({side})", progress=progress, **sampling)
        instr = [questions[qi] for _, qi, _ in meta]
        labels = judge_responses(instr, gen.texts, judge)
        for (si, qi, k), reply, label in zip(meta, gen.texts, labels):
            ok = label == ("compliance" if side == "compliant" else "refusal")
            rollouts.append(Rollout(side, si, qi, reply, label, ok, sample=k))
        acts.append(torch.stack([gen.captured[name][:, 0] for name in capture], dim=1))
    activations = torch.cat(acts, dim=0)
    if filter == "none":
        for r in rollouts:
            r.kept = True
    else:
        comp = [r for r in rollouts if r.side == "compliant" and r.in_character]
        ref = [r for r in rollouts if r.side == "refuser" and r.in_character]
        if min(len(comp), len(ref)) < min_per_side:
            raise ConfigError(
                f"only {len(comp)} compliant and {len(ref)} refuser rollouts stayed in character "
                f"(need {min_per_side} per side)",
                hint="use more questions, or filter='none' for a model that cannot hold a persona",
            )
        k = min(len(comp), len(ref)) if balance == "first_k" else None
        for r in comp[:k] + ref[:k]:
            r.kept = True
    prov = {
        "compliant_sha256": prompt_hash(p.compliant), "refuser_sha256": prompt_hash(p.refuser),
        "questions_sha256": prompt_hash(questions), "n_questions": len(questions),
        "max_new_tokens": max_new_tokens, "filter": filter, "balance": balance, "samples": samples,
        "temperature": float(temperature) if samples > 1 else 0.0, **({"seed": seed} if samples > 1 else {}),
    }
    return PersonaRollouts(rollouts, activations, layers, filter, prov, balance,
                           {"compliant": len(p.compliant), "refuser": len(p.refuser)})


def persona_direction(
    chat_model: "ChatModel",
    rollouts: PersonaRollouts,
    *,
    method: str = "last_token",
    prompts: Personas | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> LayerDirections:
    """Compliant − refuser difference of means at every layer, from kept rollouts.

    Args:
        method: ``"last_token"`` (the last prompt token, from the rollouts' own pass) or
            ``"response_avg"`` (mean over each reply's tokens; one extra forward pass over
            prompt + reply).
        prompts: the persona prompts the rollouts were made with (for ``response_avg``).

    Returns:
        :class:`LayerDirections` named ``"persona"``; the references are the refuser means.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> ro = persona_rollouts(cm, n_questions=1, max_new_tokens=4, filter="none", progress=False)
        >>> persona = persona_direction(cm, ro)
        >>> persona.name, persona.layers
        ('persona', (0, 1, 2, 3))
        >>> steer = AddVector(persona, 3.0, layer=3)  # 3 × (compliant − refuser) added at layer 3
    """
    comp, ref = rollouts.kept("compliant"), rollouts.kept("refuser")
    if not comp or not ref:
        raise ConfigError("no kept rollouts on one side: cannot form a persona direction")
    if method == "last_token":
        acts = rollouts.activations.double()
    elif method == "response_avg":
        acts = _response_means(chat_model, rollouts, prompts or bundled_personas(), batch_size, progress)
    else:
        raise ConfigError(f"unknown persona method {method!r}", hint="use 'last_token' or 'response_avg'")
    if rollouts.balance == "prompt":  # each system prompt the same
        mean_c = torch.einsum("n,nld->ld", rollouts.weights("compliant"), acts[comp])
        mean_r = torch.einsum("n,nld->ld", rollouts.weights("refuser"), acts[ref])
    else:  # each rollout the same
        mean_c, mean_r = acts[comp].mean(0), acts[ref].mean(0)
    return LayerDirections(
        vectors=mean_c - mean_r, layers=rollouts.layers, references=mean_r, position=-1 if method == "last_token" else None,
        name="persona", model_id=chat_model.model_id, model_checksum=chat_model.checksum,
        n_positive=len(comp), n_negative=len(ref),
        provenance={**rollouts.provenance, "method": method, "sign": "compliant - refuser",
                    "balance": rollouts.balance},
    )


def _response_means(chat_model, rollouts: PersonaRollouts, prompts: Personas, batch_size, progress) -> torch.Tensor:
    questions = list(prompts.questions)
    texts, n_resp = [], []
    for r in rollouts.rollouts:
        system = (prompts.compliant if r.side == "compliant" else prompts.refuser)[r.system_index]
        prompt = chat_model.format([questions[r.question_index]], system=system)[0]
        reply = chat_model.as_text(r.reply)  # a reply stays text: a control token in it is not parsed
        ids = chat_model.encode([reply])[0]
        texts.append(prompt + reply)
        n_resp.append(max(1, len(ids)))
    layers = rollouts.layers
    names = [chat_model.hook_name(l) for l in layers]
    out = torch.zeros(len(texts), len(layers), chat_model.d_model, dtype=torch.float64)
    plan = plan_batches(chat_model, texts, batch_size=batch_size, keep_last=max(n_resp) + 1)
    for o in run_plan(chat_model, plan, capture={n: None for n in names}, stop_at_layer=max(layers) + 1,
                      desc="persona: response activations", progress=progress):
        for k, row in enumerate(o.batch.rows.tolist()):
            m = n_resp[row]
            for j, n in enumerate(names):
                out[row, j] = o.captured[n][k, -m:].double().mean(0)
    return out
