"""First-token measures: next-token logits, the refusal log-odds, the first-token outcome, KL.

Context
-------
The fast measure of refusal (Arditi et al.): one forward pass per prompt gives the
next-token logits where the reply starts; the reply *opens a refusal* when the greedy first
token is one of the model's refusal tokens (``"I"``, ``"As"`` …), and the *refusal score*
is the log-odds that it does. :func:`first_token_outcome` is the one implementation of
both, under any interventions; sweeps over layers and strengths use it (the studies'
:meth:`~persona_refusal.study.context.RunContext.forward` too). :func:`kl_divergence_on`
measures how far an edit moves the next-token distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_refusal.checks import checked
from persona_refusal import ops
from persona_refusal.activations import BatchPlan, plan_batches, run_plan
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation.rate import Rate

if TYPE_CHECKING:
    from persona_refusal.interventions import Intervention
    from persona_refusal.models import ChatModel

__all__ = ["FirstTokenOutcome", "first_token_outcome", "first_token_refusal", "opens_refusal", "last_logits",
           "refusal_scores", "kl_divergence_on"]


def opens_refusal(tokens: Tensor, refusal_token_ids: Sequence[int]) -> Tensor:
    """Whether each first token is one of the refusal tokens (bool, CPU)."""
    return torch.isin(tokens.cpu(), torch.tensor(list(refusal_token_ids), dtype=torch.long))


def first_token_refusal(logits: Float[Tensor, "n d_vocab"],
                        refusal_token_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """From next-token logits: whether the greedy first token opens a refusal, and the
    refusal log-odds (float64), per row.

    Example:
        >>> refused, score = first_token_refusal(torch.log(torch.tensor([[0.75, 0.25]])), [0])
        >>> bool(refused[0]), round(float(score[0]), 4)
        (True, 1.0986)
    """
    ids = list(refusal_token_ids)
    return opens_refusal(logits.argmax(-1), ids), ops.refusal_log_odds(logits, ids).cpu()


@checked
@dataclass
class FirstTokenOutcome:
    """What :func:`first_token_outcome` measured, per prompt in prompt order.

    Example:
        >>> out = first_token_outcome(load_chat_model("tiny"), ["Hi", "Hello"], progress=False)  # doctest: +SKIP
        >>> out.refused.shape, out.scores.dtype, out.rate                                       # doctest: +SKIP
        (torch.Size([2]), torch.float64, 0.0% [0.0%, 65.8%] (0/2))
    """

    refused: Tensor
    """Whether the greedy first token is a refusal token (bool)."""
    scores: Tensor
    """First-token refusal log-odds (float64; positive: a refusal opener is likely)."""
    logits: Tensor | None = None
    """Next-token logits ``[n_prompts, d_vocab]`` (float32, CPU), when asked for (``keep_logits``)."""
    resid: dict[int, list[Tensor]] = field(default_factory=dict)
    """``resid_pre`` layer → one ``[rows, pos, d_model]`` tensor per batch of the plan, for the
    layers of ``capture_layers``."""

    @property
    def rate(self) -> Rate:
        """The share of prompts whose greedy first token opens a refusal, with its Wilson interval."""
        return Rate(int(self.refused.sum()), int(self.refused.numel()))

    @property
    def mean_score(self) -> float:
        """The mean refusal log-odds (NaN for no prompts)."""
        return float(self.scores.mean()) if self.scores.numel() else float("nan")

    def __repr__(self) -> str:
        return f"FirstTokenOutcome(refused {self.rate!r}, mean log-odds {self.mean_score:.3g})"


def _plan(chat_model, instructions, system, batch_size, keep_last=8) -> BatchPlan:
    if isinstance(instructions, BatchPlan):
        return instructions
    if len(instructions) == 0:
        raise ConfigError("empty prompt set: nothing to evaluate")
    return plan_batches(chat_model, chat_model.format(instructions, system), batch_size=batch_size,
                        keep_last=keep_last)


def first_token_outcome(
    chat_model: "ChatModel",
    instructions: Sequence[str] | BatchPlan,
    interventions: Sequence["Intervention"] = (),
    *,
    system: str | None = None,
    batch_size: int | None = None,
    keep_logits: bool = False,
    capture_layers: Sequence[int] = (),
    start_layer: int = 0,
    start_resid: Sequence[Tensor] | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> FirstTokenOutcome:
    """Did the model refuse, by its first token, under ``interventions``: one forward pass per prompt.

    Args:
        instructions: the prompts (formatted with ``system``), or a batch plan of them.
        interventions: edits applied during the pass (default: none).
        batch_size: prompts per batch (default: sized automatically).
        keep_logits: also return the next-token logits.
        capture_layers: keep the full residual stream at the ``resid_pre`` of these layers.
        start_layer: start at this block from ``start_resid`` (a capture of the unedited
            run at that layer, one tensor per batch of the plan: edits acting before it are
            not re-applied); 0 runs from the embedding.
        desc, progress: progress-bar label, and whether to show it.

    Returns:
        per prompt, whether the greedy first token is a refusal token and the refusal
        log-odds; ``.rate`` is the refusal rate with its Wilson 95% interval.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> out = first_token_outcome(cm, ["Hi", "Hello"], progress=False)
        >>> out.refused.shape, out.scores.dtype
        (torch.Size([2]), torch.float64)
    """
    plan = _plan(chat_model, instructions, system, batch_size)
    kw = {} if start_layer == 0 else {"start_layer": start_layer, "start_resid": start_resid}
    names = {chat_model.hook_name(l): None for l in capture_layers}
    n = plan.n_prompts
    refused = torch.zeros(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    kept = torch.zeros(n, chat_model.model.cfg.d_vocab_out) if keep_logits else None
    resid: dict[int, list[Tensor]] = {l: [] for l in capture_layers}
    for o in run_plan(chat_model, plan, interventions=interventions, capture=names or None, logits=True, desc=desc,
                      progress=progress, **kw):
        for l in capture_layers:
            resid[l].append(o.captured[chat_model.hook_name(l)])
        refused[o.batch.rows], scores[o.batch.rows] = first_token_refusal(o.last_logits, chat_model.refusal_token_ids)
        if kept is not None:
            kept[o.batch.rows] = o.last_logits.float().cpu()
    return FirstTokenOutcome(refused, scores, kept, resid)


def last_logits(chat_model: "ChatModel", instructions: Sequence[str] | BatchPlan, *,
                interventions: Sequence["Intervention"] = (), system: str | None = None, batch_size: int | None = None,
                desc: str | None = None, progress: bool = True) -> Float[Tensor, "n_prompts d_vocab"]:
    """Next-token logits at the end of each prompt (where the reply starts), prompt order.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> last_logits(cm, ["Hi", "Hello"], progress=False).shape
        torch.Size([2, 384])
    """
    return first_token_outcome(chat_model, instructions, interventions, system=system, batch_size=batch_size,
                               keep_logits=True, desc=desc, progress=progress).logits


def refusal_scores(chat_model: "ChatModel", instructions: Sequence[str] | BatchPlan, *,
                   interventions: Sequence["Intervention"] = (), system: str | None = None,
                   batch_size: int | None = None, desc: str | None = None,
                   progress: bool = True) -> Float[Tensor, "n_prompts"]:
    """First-token refusal log-odds per prompt (positive: a refusal opener is likely; float64).

    The ``scores`` of :func:`first_token_outcome`, which also says which prompts are refused.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> refusal_scores(cm, ["Hi", "Hello"], progress=False).shape
        torch.Size([2])
    """
    return first_token_outcome(chat_model, instructions, interventions, system=system, batch_size=batch_size,
                               desc=desc, progress=progress).scores


def kl_divergence_on(
    chat_model: "ChatModel",
    instructions: Sequence[str] | BatchPlan,
    interventions: Sequence["Intervention"],
    *,
    reference_logits: Tensor | None = None,
    system: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> Float[Tensor, "n_prompts"]:
    """``KL(unedited ‖ edited)`` of the next-token distribution per prompt, in nats.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> d = Direction(vector=torch.randn(cm.d_model), layer=1, model_id=cm.model_id)
        >>> kl_divergence_on(cm, ["Hi", "Hello"], [Ablate(d)], progress=False).shape
        torch.Size([2])
    """
    if reference_logits is None:
        reference_logits = last_logits(chat_model, instructions, system=system, batch_size=batch_size, progress=progress)
    edited = last_logits(chat_model, instructions, interventions=interventions, system=system,
                         batch_size=batch_size, progress=progress)
    return ops.kl_divergence(reference_logits, edited)
