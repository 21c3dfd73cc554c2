"""Generation: batched greedy replies under interventions, and judged replies under named conditions.

Context
-------
The faithful measure of refusal: greedy decoding under the interventions (KV cache,
shared prompt prefix, left padding), then a judge (:mod:`persona_refusal.evaluation.judges`)
labels each reply *refusal*, *compliance* or *degenerate*. :func:`generate_conditions`
decodes several conditions in shared batches; :func:`judged_conditions` also judges them
and gives each condition's refusal :class:`~persona_refusal.evaluation.Rate`. Judged
generations can stop a reply as soon as every judge's label is final
(``stop_when=decided_by(*judges)``), which leaves the labels unchanged and saves most of
the decoding of refusals.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from persona_refusal.checks import checked
from persona_refusal import decoding, ops
from persona_refusal.activations import Batch, BatchPlan, _prefix_cache, next_token_logits, plan_batches, retry_halving
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation.judges import Judge, SubstringJudge, judge_responses
from persona_refusal.evaluation.rate import Rate
from persona_refusal.evaluation.scores import opens_refusal
from persona_refusal.interventions import Intervention, apply, apply_conditions
from persona_refusal.models import ChatModel

__all__ = ["Generation", "generate", "generate_details", "generate_conditions", "JudgedCondition",
           "judged_conditions", "CHECK_EVERY"]


@dataclass
class Generation:
    """Replies plus what the prompt pass measured on the way (no extra forward pass).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> g = generate_details(cm, ["Hi", "Hello"], max_new_tokens=4, progress=False)
        >>> len(g.texts), g.first_scores.shape
        (2, torch.Size([2]))
    """

    texts: list[str]
    """One greedy reply per prompt, in prompt order."""
    first_scores: Tensor
    """First-token refusal log-odds per prompt (float64)."""
    first_tokens: Tensor
    """Greedy first token per prompt."""
    captured: dict[str, Tensor]
    """Hook name → ``[n_prompts, n_positions, d]`` activations of the prompt pass, if asked for."""

    def first_token_refusals(self, refusal_token_ids: Sequence[int]) -> Tensor:
        """Whether each greedy reply opens with a refusal token."""
        return opens_refusal(self.first_tokens, refusal_token_ids)

    def __repr__(self) -> str:
        n = len(self.texts)
        mean = f"{float(self.first_scores.double().mean()):.3g}" if n else "n/a"
        first = (self.texts[0][:40] + ("…" if len(self.texts[0]) > 40 else "")) if n else ""
        cap = f", captured={sorted(self.captured)}" if self.captured else ""
        return f"Generation({n} replies, mean first-token refusal log-odds {mean}, first={first!r}{cap})"


def generate(chat_model: "ChatModel", instructions: Sequence[str] | BatchPlan, *,
             interventions: Sequence["Intervention"] = (), system: str | None = None, max_new_tokens: int = 64,
             batch_size: int | None = None, share_prefix: bool = True,
             stop_when: Callable[[str], bool] | None = None, desc: str | None = "generating",
             progress: bool = True) -> list[str]:
    """Greedy replies, batched, with a KV cache, under any interventions.

    The shared prompt prefix runs once per batch; the rest is left-padded; edits apply
    at every position, generated ones included. Decoding stops at the model's
    end-of-turn tokens; rows that have stopped leave the batch. Returns one reply per
    instruction, in order, without the end-of-turn token. :func:`generate_details`
    also returns first-token scores and prompt activations from the same pass.

    ``stop_when(reply_so_far) -> bool`` (e.g. :func:`decided_by`) also ends a row early,
    checked every :data:`CHECK_EVERY` tokens; its reply is then what it had so far (see
    :func:`generate_conditions`).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> len(generate(cm, ["Hi"], max_new_tokens=4, progress=False))
        1
    """
    return generate_details(chat_model, instructions, interventions=interventions, system=system,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, share_prefix=share_prefix,
                            stop_when=stop_when, desc=desc, progress=progress).texts


def generate_details(
    chat_model: "ChatModel",
    instructions: Sequence[str] | BatchPlan,
    *,
    interventions: Sequence["Intervention"] = (),
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    share_prefix: bool = True,
    capture: dict[str, Sequence[int]] | None = None,
    stop_when: Callable[[str], bool] | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    desc: str | None = "generating",
    progress: bool = True,
) -> Generation:
    """:func:`generate`, also keeping first-token scores and prompt activations.

    Args:
        capture: hook name → positions (from the end of the prompt) to keep from the
            prompt pass, e.g. ``{"blocks.10.hook_resid_pre": [-1]}``.
        stop_when: early stopping, ``reply_so_far -> bool``, as in :func:`generate_conditions`.
        temperature: 0 (default) decodes greedily; above 0, each token is sampled from the
            softmax of ``logits / temperature`` with a generator seeded by ``seed`` (the same
            plan and seed give the same replies). First-token scores are of the logits, as
            when greedy.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> g = generate_details(cm, ["Hi"], max_new_tokens=4, capture={"blocks.1.hook_resid_pre": [-1]}, progress=False)
        >>> g.captured["blocks.1.hook_resid_pre"].shape
        torch.Size([1, 1, 64])
    """
    capture = dict(capture or {})
    keep_last = max([8] + [-min(p) for p in capture.values() if p])
    _check_generation_args(chat_model, max_new_tokens, capture)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 10:
        raise ConfigError(f"temperature must be a number between 0 and 10, got {temperature!r}")
    plan = instructions if isinstance(instructions, BatchPlan) else plan_batches(
        chat_model, chat_model.format(instructions, system), batch_size=batch_size,
        batch_tokens=_GEN_BATCH_TOKENS, share_prefix=share_prefix, reserve=max_new_tokens, keep_last=keep_last)
    with apply(chat_model, *interventions), torch.inference_mode():
        return _generate_plan(chat_model, plan, max_new_tokens, capture, desc, progress, stop_when,
                              pick=_sampler(temperature, seed))


def _sampler(temperature: float, seed: int) -> Callable[[Tensor], Tensor] | None:
    """The next-token rule: ``None`` for greedy (argmax), else seeded sampling at ``temperature``."""
    if temperature == 0:
        return None
    gen = torch.Generator().manual_seed(int(seed))

    def pick(logits: Tensor) -> Tensor:
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(logits.device)

    return pick


def generate_conditions(
    chat_model: "ChatModel",
    instructions: Sequence[str],
    conditions: Sequence[Sequence["Intervention"]],
    *,
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    stop_when: Callable[[str], bool] | None = None,
    desc: str | None = "generating",
    progress: bool = True,
) -> list[Generation]:
    """Greedy replies to the same prompts under several sets of interventions at once.

    Every (condition, prompt) pair is a row; rows of different conditions share batches
    (each condition's edits touch only its rows, see
    :func:`persona_refusal.interventions.apply_conditions`). Decoding one token for many
    rows costs little more than for a few on a CPU, so this is much faster than one
    :func:`generate_details` call per condition. Returns one :class:`Generation` per
    condition, equal to what :func:`generate_details` gives for it.

    Early stopping: with ``stop_when``, every :data:`CHECK_EVERY` decoding steps each
    row still decoding has its tokens so far decoded (as the final reply is) and leaves
    the batch when ``stop_when(text)`` is true; its reply is that text. (A text ending
    in U+FFFD, maybe an incomplete multi-byte character, or in whitespace, which the
    tokenizer may still clean up, waits for the next check: so a stopped reply is the
    start of the full-length one.) With ``stop_when=decided_by(*judges)`` a row stops
    only once every judge's label is final (a refusal phrase seen, or the judge's whole
    window written), so each of these judges labels the shortened reply exactly as it
    would label the full-length one: rates are unchanged, refusals cost a few tokens
    instead of ``max_new_tokens``. The replies of stopped rows are truncated at the
    decision point, though: replies saved for reading or for another judge (one not
    among ``judges``, e.g. an LLM judge later) are shorter than without stopping.
    ``stop_when=None`` (the default) decodes every row to its end-of-turn token or
    ``max_new_tokens``.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> base, ablated = generate_conditions(cm, ["Hi"], [[], [Ablate(d)]], max_new_tokens=4)  # doctest: +SKIP
    """
    if not conditions:
        raise ConfigError("generate_conditions needs at least one condition")
    _check_generation_args(chat_model, max_new_tokens, {})
    prompts = list(instructions)
    texts = chat_model.format(prompts, system) * len(conditions)
    labels = [c for c in range(len(conditions)) for _ in prompts]
    plan = plan_batches(chat_model, texts, batch_size=batch_size, batch_tokens=_GEN_BATCH_TOKENS,
                        reserve=max_new_tokens, conditions=labels)
    with apply_conditions(chat_model, conditions), torch.inference_mode():
        gen = _generate_plan(chat_model, plan, max_new_tokens, {}, desc, progress, stop_when)
    n = len(prompts)
    return [Generation(gen.texts[c * n:(c + 1) * n], gen.first_scores[c * n:(c + 1) * n],
                       gen.first_tokens[c * n:(c + 1) * n], {}) for c in range(len(conditions))]


@checked
@dataclass
class JudgedCondition:
    """Judged replies of one condition (:func:`judged_conditions`), in prompt order."""

    replies: list[str]
    """The greedy replies."""
    labels: list[str]
    """The headline judge's label of each reply (``refusal``, ``compliance``, ``degenerate``)."""
    labels_by_judge: dict[str, list[str]] = field(default_factory=dict)
    """The labels of every other judge asked for, by name."""
    refused: list[bool] = field(default_factory=list)
    """Whether each greedy reply opens with a refusal token (the first-token outcome of the same pass)."""
    scores: list[float] = field(default_factory=list)
    """First-token refusal log-odds of each prompt (the same pass)."""

    @property
    def rate(self) -> Rate:
        """The judged refusal rate, with its Wilson 95% interval."""
        return Rate(self.labels.count("refusal"), len(self.labels))

    def to_dict(self) -> dict:
        """JSON-able form: ``labels``, ``labels_by_judge``, ``replies``, ``refused``, ``scores``."""
        return {"labels": self.labels, "labels_by_judge": self.labels_by_judge, "replies": self.replies,
                "refused": self.refused, "scores": self.scores}

    def __repr__(self) -> str:
        return f"JudgedCondition(refusal {self.rate!r}, {len(self.replies)} replies)"


def judged_conditions(chat_model: "ChatModel", instructions: Sequence[str],
                      conditions: Mapping[str, Sequence["Intervention"]], *, judge: Judge | None = None,
                      judges: Mapping[str, Judge] | None = None, system: str | None = None, max_new_tokens: int = 64,
                      batch_size: int | None = None, stop_when: Callable[[str], bool] | None = None,
                      desc: str | None = "generating", progress: bool = True) -> dict[str, JudgedCondition]:
    """Greedy replies to the same prompts under named conditions, judged, in one call.

    The conditions share batches (:func:`generate_conditions`). Each reply is labelled by
    ``judge`` (default :class:`SubstringJudge`), and by every judge of ``judges`` (name →
    judge; a judge given in both is asked once).

    Returns:
        condition name → :class:`JudgedCondition` (replies, labels, first-token outcomes,
        and ``.rate``: the judged refusal rate with its Wilson interval).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> got = judged_conditions(cm, ["Hi"], {"baseline": [], "steered": [AddVector(d, 2.0)]},
        ...                         max_new_tokens=4, progress=False)             # doctest: +SKIP
        >>> got["steered"].rate                                                    # doctest: +SKIP
        0.0% [0.0%, 79.3%] (0/1)
    """
    prompts = list(instructions)
    judge = judge if judge is not None else SubstringJudge()
    judges = dict(judges or {})
    gens = generate_conditions(chat_model, prompts, list(conditions.values()), system=system,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, stop_when=stop_when, desc=desc,
                               progress=progress)
    out = {}
    for key, gen in zip(conditions, gens):
        by_judge = {name: judge_responses(prompts, gen.texts, j) for name, j in judges.items()}
        same = [name for name, j in judges.items() if j is judge]
        labels = by_judge[same[0]] if same else judge_responses(prompts, gen.texts, judge)
        out[key] = JudgedCondition(gen.texts, labels, by_judge, gen.first_token_refusals(chat_model.refusal_token_ids)
                                   .tolist(), gen.first_scores.tolist())
    return out


def _check_generation_args(chat_model, max_new_tokens: int, capture) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise ConfigError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}",
                          hint="use an integer of at least 1, e.g. max_new_tokens=64")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not isinstance(capture, Mapping):
        raise ConfigError(f"capture must map hook names to positions, got {type(capture).__name__}")
    for name in capture:
        if name not in chat_model.model.hook_dict:
            raise ConfigError(f"unknown hook point {name!r}")


def _generate_plan(chat_model, plan: BatchPlan, max_new_tokens: int, capture, desc, progress,
                   stop_when=None, pick=None) -> Generation:
    from tqdm.auto import tqdm

    n = plan.n_prompts
    texts: list[str] = [""] * n
    scores = torch.zeros(n, dtype=torch.float64)
    first = torch.zeros(n, dtype=torch.long)
    captured: dict[str, Tensor] = {}
    stop = torch.tensor(chat_model.stop_token_ids or [-1], device=chat_model.device)
    bar = tqdm(total=n, desc=desc, disable=not progress or desc is None, leave=False)
    def generate_batch(b: Batch, _rows) -> tuple:
        return _generate_batch(chat_model, b, max_new_tokens, stop, capture, stop_when=stop_when, pick=pick)

    for whole in plan.batches:
        for batch, (seqs, logits0, cap) in retry_halving(whole, generate_batch, "generating for"):
            rows = batch.rows
            scores[rows] = ops.refusal_log_odds(logits0, list(chat_model.refusal_token_ids)).cpu()
            first[rows] = logits0.argmax(-1).cpu()
            for name, t in cap.items():
                if name not in captured:
                    captured[name] = torch.zeros((n,) + tuple(t.shape[1:]))
                captured[name][rows] = t
            for row, seq in zip(rows.tolist(), seqs):
                texts[row] = chat_model.tokenizer.decode(seq, skip_special_tokens=True)
            bar.update(batch.size)
    bar.close()
    return Generation(texts, scores, first, captured)


CHECK_EVERY = 4
"""Decoding steps between two early-stopping checks (``stop_when``) of generation: each
check decodes every active row's tokens so far, which costs little next to 4 forward
passes. A row whose text so far ends in U+FFFD (maybe an incomplete character) or in
whitespace waits for the next check."""

_GEN_BATCH_TOKENS = 4096
"""Per-row token budget of a generation batch: decoding steps run one token per row, and
skinny matrix products are inefficient on a CPU, so generation batches are large."""


def _generate_batch(chat_model: "ChatModel", batch, max_new_tokens: int, stop: Tensor, capture=None,
                    stop_when: Callable[[str], bool] | None = None, pick: Callable[[Tensor], Tensor] | None = None):
    pick = pick or (lambda logits: logits.argmax(-1))
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model = chat_model.model
    state = chat_model._state
    n_layers = chat_model.n_layers
    b = batch.size
    cache = _prefix_cache(chat_model, batch, n_layers, frozen=False)
    if cache is None:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, b)
    captured: dict[str, Tensor] = {}

    def make_hook(name, positions):
        def hook(act, hook):
            if state.at_prompt_positions:
                captured[name] = act[:, list(positions)].detach().float().cpu()
            return act
        return hook

    cap_hooks = [(name, make_hook(name, pos)) for name, pos in (capture or {}).items()]
    with model.hooks(fwd_hooks=cap_hooks), state.use("suffix" if batch.n_prefix else "full", batch.rows,
                                                      batch.conditions):
        logits0 = next_token_logits(model, model(batch.tokens, attention_mask=batch.mask, past_kv_cache=cache,
                                                 stop_at_layer=n_layers))
    nxt = pick(logits0)
    # the decoding steps: this package's fast path where it covers the model and its hooks
    session = decoding.start(model, cache, max_new_tokens, chat_model.decode) if max_new_tokens > 1 else None
    if session is not None:
        cache = None  # the session holds the keys and values now
    out: list[list[int]] = [[] for _ in range(b)]
    active = torch.arange(b)  # original row of each row still decoding
    for step in range(max_new_tokens):
        is_stop = torch.isin(nxt, stop.to(nxt.device)).cpu()
        tokens = nxt.tolist()  # one read-back per step, not one per row
        for i, row in enumerate(active.tolist()):
            if not is_stop[i]:
                out[row].append(tokens[i])
        if step == max_new_tokens - 1:
            break
        done = is_stop
        if stop_when is not None and (step + 1) % CHECK_EVERY == 0:  # rows whose reply is decided leave too
            decode = chat_model.tokenizer.decode
            done = is_stop | torch.tensor([not bool(is_stop[i]) and _stops(decode(out[row], skip_special_tokens=True),
                                                                          stop_when)
                                           for i, row in enumerate(active.tolist())], dtype=torch.bool)
        keep = (~done).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():  # finished rows leave the batch
            active, nxt = active[keep], nxt[keep.to(nxt.device)]
            if session is not None:
                session.select_rows(keep)
            else:
                _select_rows(cache, keep)
        with state.use("decode", batch.rows[active],
                       None if batch.conditions is None else batch.conditions[active]):
            if session is not None:
                nxt = pick(next_token_logits(model, session.step(nxt), session.unembed))
            else:
                ones = torch.ones((active.numel(), 1), dtype=batch.mask.dtype, device=batch.mask.device)
                nxt = pick(next_token_logits(model, model(nxt[:, None], attention_mask=ones, past_kv_cache=cache,
                                                          stop_at_layer=n_layers)))
    return out, logits0, captured


def _stops(text: str, stop_when: Callable[[str], bool]) -> bool:
    """Whether a row whose reply so far is ``text`` stops now: ``stop_when(text)``, asked
    only when ``text`` ends in a settled character.

    A reply so far that ends in U+FFFD may end in an incomplete multi-byte character
    (more tokens turn it into another character, or several ``"\\ufffd"`` into one), and
    one that ends in whitespace may lose it to the tokenizer's clean-up of spaces before
    punctuation; any other text is the start of every longer decoding, which is what
    the guarantee of :func:`decided_by` needs. Such rows wait for the next check.
    """
    if text.endswith("\ufffd") or text[-1:].isspace():
        return False
    return bool(stop_when(text))


def _select_rows(cache, keep: Tensor) -> None:
    """Keep only some rows of a TransformerLens KV cache (in place)."""
    for e in cache.entries:
        idx = keep.to(e.past_keys.device)
        e.past_keys = e.past_keys[idx]
        e.past_values = e.past_values[idx]
    cache.previous_attention_mask = cache.previous_attention_mask[keep.to(cache.previous_attention_mask.device)]
