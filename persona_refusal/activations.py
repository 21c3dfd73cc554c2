"""Batched forward passes that cache only what is needed, sharing the chat-template prefix.

Context
-------
Every experiment in this package is "run these prompts through the model, maybe under
some edits, and keep a few numbers": activations at a few hook points and positions, or
the next-token logits at the end of the prompt. On a CPU the forward pass is the whole
cost, so this module makes each pass count:

* **Shared prefixes run once.** Chat prompts start with the same tokens (the system
  prompt and the user header — 20 to 100+ tokens, often more than the instruction).
  Prompts are sorted so that equal prefixes sit together and split into *prefix groups*
  (one per system prompt, say); each group's common prefix is run once, its keys and
  values are kept in a TransformerLens KV cache, and only the rest of each prompt is
  run per row. Edits apply to the prefix too (it runs under the same hooks), so results
  equal full passes up to float rounding.
* **Left padding** for the per-row part, so "position −1" is every prompt's last token.
* **Only the needed layers and positions**: ``stop_at_layer`` skips layers after the
  last one read, activations are reduced to the requested positions inside the hook and
  accumulated in float64 means without holding whole sequences, and logits are computed
  for the last position only (the unembedding is a quarter of a small model's cost).
* **Resuming mid-model**: a run can start at layer ``l`` from cached residuals of an
  earlier run (edits that act at ``l`` or later then cost only the layers after ``l``).
* A batch that runs out of memory is split in two and retried, with a warning.

Positions are counted from the end of the prompt (``-1`` is the last token).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from persona_refusal.errors import ConfigError
from persona_refusal.interventions import Intervention, apply
from persona_refusal.storage import sha256_json

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = [
    "Batch",
    "BatchPlan",
    "plan_batches",
    "run_plan",
    "BatchOutput",
    "mean_activations",
    "cache_activations",
    "DEFAULT_BATCH_TOKENS",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 2048
"""Default budget of per-row tokens (padding included) in one forward batch."""


@dataclass
class Batch:
    """One forward batch: shared prefixes run once, plus left-padded per-row remainders.

    Rows fall into *prefix groups* (e.g. one per system prompt): each group's common
    token prefix is one row of ``prefix`` (left-padded to the longest), run once, and its
    keys and values are shared by the group's rows (``group`` maps rows to prefixes).
    """

    rows: Int[Tensor, "batch"]
    """Indices of the batch's prompts in the prompt list."""
    prefix: Int[Tensor, "n_groups prefix"]
    """Shared token prefix of each group, left-padded (zero columns: no prefix)."""
    prefix_mask: Int[Tensor, "n_groups prefix"]
    """1 for real prefix tokens, 0 for padding."""
    group: Int[Tensor, "batch"]
    """Prefix row of each row."""
    tokens: Int[Tensor, "batch pos"]
    """Remaining token ids per row, left-padded."""
    mask: Int[Tensor, "batch pos"]
    """1 for real tokens, 0 for padding."""
    conditions: Int[Tensor, "batch"] | None = None
    """Condition of each row in a multi-condition run (see :func:`apply_conditions`)."""

    @property
    def size(self) -> int:
        """Number of prompts (rows) in the batch."""
        return int(self.rows.shape[0])

    @property
    def n_prefix(self) -> int:
        """Width of the (padded) prefix."""
        return int(self.prefix.shape[1])

    @property
    def prefix_conditions(self) -> Tensor | None:
        """Condition of each prefix row (every row of a group shares its condition)."""
        if self.conditions is None:
            return None
        out = torch.zeros(self.prefix.shape[0], dtype=torch.long)
        out[self.group.cpu()] = self.conditions.cpu()
        return out

    def full_mask(self) -> Tensor:
        """Attention mask over prefix + remainder, per row."""
        if not self.n_prefix:
            return self.mask
        return torch.cat([self.prefix_mask[self.group.to(self.prefix_mask.device)], self.mask], dim=1)

    def split(self) -> tuple["Batch", "Batch"]:
        """Two halves (same prefixes), for retrying after running out of memory."""
        h = self.size // 2
        halves = []
        for sl in (slice(0, h), slice(h, None)):
            mask = self.mask[sl]
            keep = int(mask.sum(0).nonzero().min()) if bool(mask.any()) else 0
            halves.append(Batch(self.rows[sl], self.prefix, self.prefix_mask, self.group[sl],
                                self.tokens[sl, keep:], mask[:, keep:],
                                None if self.conditions is None else self.conditions[sl]))
        return halves[0], halves[1]


@dataclass
class BatchPlan:
    """How a list of prompts is cut into batches (reused by runs that resume mid-model)."""

    batches: list[Batch]
    """The batches, in run order."""
    n_prompts: int
    """Number of prompts."""
    key: str
    """Hash of the prompts and batching, to check cached residuals belong to this plan."""
    lengths: Int[Tensor, "n_prompts"] = field(default=None)
    """Token length of every prompt."""


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _prefix_groups(ids: list[list[int]], order: list[int], conditions, keep_last: int) -> list[tuple[list[int], int]]:
    """Split prompts (in sorted order) into groups sharing a token prefix.

    A new group starts where keeping the next prompt would shrink the current group's
    prefix by more tokens, summed over the group, than the prompt would share — e.g. at
    each new system prompt. Returns ``(rows, prefix_length)`` per group.
    """
    groups: list[tuple[list[int], int]] = []
    rows: list[int] = []
    g = 0
    for r in order:
        cap = max(0, len(ids[r]) - max(1, keep_last))
        if not rows:
            rows, g = [r], cap
            continue
        same = conditions is None or conditions[r] == conditions[rows[0]]
        l = min(_lcp(ids[rows[0]], ids[r]), cap)
        if same and not (l < g and len(rows) * (g - l) > l):
            rows.append(r)
            g = min(g, l)
        else:
            groups.append((rows, g))
            rows, g = [r], cap
    if rows:
        groups.append((rows, g))
    return groups


def _batch_cost(ids: list[list[int]], part: list[tuple[int, int, int]]) -> int:
    """Tokens a batch runs through the model, padding included: every row's part after its
    group's prefix, plus each group's prefix once (as :func:`plan_batches` builds it; a batch
    where one row has no prefix runs every row whole)."""
    plen = {gi: p for _, p, gi in reversed(part)}  # the group's prefix length (its first row's)
    if min(plen.values()) == 0:
        return len(part) * max(len(ids[r]) for r, _, _ in part)
    rows = len(part) * max(len(ids[r]) - plen[gi] for r, _, gi in part)
    return rows + len(plen) * max(plen.values())


def plan_batches(
    chat_model: "ChatModel",
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    keep_last: int = 8,
    share_prefix: bool = True,
    reserve: int = 0,
    conditions: Sequence[int] | None = None,
) -> BatchPlan:
    """Tokenise formatted prompts and cut them into batches.

    Args:
        texts: formatted prompts (see :meth:`ChatModel.format`).
        batch_size: prompts per batch (default: as many as fit ``batch_tokens``).
        batch_tokens: budget of tokens a batch runs through the model (rows and group
            prefixes, padding included) when ``batch_size`` is not given; it bounds the
            memory of one forward pass whatever the prompts' length.
        keep_last: every row keeps at least this many of its last tokens out of the shared
            prefix (positions read or edited must lie there).
        share_prefix: run shared prefixes once (``False``: plain left padding).
        reserve: tokens that will be generated (checked against the context window).
        conditions: condition index of each prompt, for multi-condition runs; prompts of
            different conditions never share a prefix.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> plan = plan_batches(cm, cm.format(["Hi", "Hello there", "Tell me a story."]), batch_size=2)
        >>> plan.n_prompts, [b.size for b in plan.batches]
        (3, [2, 1])
    """
    if len(texts) == 0:
        raise ConfigError("empty prompt set: nothing to run")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if conditions is not None and len(conditions) != len(texts):
        raise ConfigError("conditions must give one condition per prompt")
    ids = chat_model.encode(list(texts))
    lengths = torch.tensor([len(x) for x in ids])
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            raise ConfigError(f"prompt {i} is empty")
        if n + reserve > chat_model.n_ctx:
            raise ConfigError(
                f"prompt {i} is {n} tokens{f' (+{reserve} to generate)' if reserve else ''}, longer than the "
                f"context window of {chat_model.n_ctx} tokens", hint="shorten it or generate fewer tokens")
    cond = None if conditions is None else [int(c) for c in conditions]
    if share_prefix:
        order = sorted(range(len(ids)), key=lambda i: (ids[i], cond[i] if cond else 0, i))
        groups = _prefix_groups(ids, order, cond, keep_last)
    else:
        order = list(range(len(ids)))
        groups = [([r], 0) for r in order]
    # flatten to (row, prefix length, group id) in run order, then cut by budget
    flat = [(r, p, gi) for gi, (rows, p) in enumerate(groups) for r in rows]
    pad = chat_model.tokenizer.pad_token_id
    device = chat_model.device
    batches: list[Batch] = []
    i = 0
    while i < len(flat):
        if batch_size is not None:
            j = min(len(flat), i + batch_size)
        else:  # grow the batch while its tokens (rows and prefixes, padding included) fit the budget
            j = i + 1
            while j < len(flat) and _batch_cost(ids, flat[i:j + 1]) <= batch_tokens:
                j += 1
        part = flat[i:j]
        gids = sorted({gi for _, _, gi in part}, key=[gi for _, _, gi in part].index)
        plen = {gi: next(p for _, p, g in part if g == gi) for gi in gids}
        if min(plen.values()) == 0:  # a row without shared prefix: no prefix for this batch
            plen = {gi: 0 for gi in gids}
        width_p = max(plen.values())
        prefix = torch.full((len(gids), width_p), pad, dtype=torch.long)
        prefix_mask = torch.zeros((len(gids), width_p), dtype=torch.long)
        for k, gi in enumerate(gids):
            first = next(r for r, _, g in part if g == gi)
            n = plen[gi]
            if n:
                prefix[k, width_p - n:] = torch.tensor(ids[first][:n], dtype=torch.long)
                prefix_mask[k, width_p - n:] = 1
        rest = [ids[r][plen[gi]:] for r, _, gi in part]
        width = max(len(x) for x in rest)
        tokens = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for k, x in enumerate(rest):
            tokens[k, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[k, width - len(x):] = 1
        rows = torch.tensor([r for r, _, _ in part])
        group = torch.tensor([gids.index(gi) for _, _, gi in part])
        batches.append(Batch(rows, prefix.to(device), prefix_mask.to(device), group.to(device), tokens.to(device),
                             mask.to(device), None if cond is None else torch.tensor([cond[r] for r, _, _ in part])))
        i = j
    key = sha256_json({"ids": ids, "order": order, "conditions": cond,
                       "batches": [[b.rows.tolist(), b.n_prefix] for b in batches]})
    return BatchPlan(batches, len(ids), key, lengths)


@dataclass
class BatchOutput:
    """What a run keeps of one batch."""

    batch: Batch
    """The batch (``batch.rows`` maps rows back to prompts)."""
    last_logits: Float[Tensor, "batch d_vocab"] | None
    """Next-token logits at each prompt's last position (float32, CPU), if asked for."""
    captured: dict[str, Tensor]
    """Hook name → activations ``[batch, n_positions, d]`` (float32, CPU), or the whole
    per-row part ``[batch, pos, d]`` for hooks captured at every position."""
    resid: Tensor | None = None
    """Residual stream where the run stopped (``stop_at_layer``), if asked for."""


def _prefix_cache(chat_model: "ChatModel", batch: Batch, stop_at_layer: int | None, *, frozen: bool = True):
    """Run each group's shared prefix once; return a KV cache holding them for every row.

    Returns ``None`` when the batch has no prefix.
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    if not batch.n_prefix:
        return None
    model = chat_model.model
    k = batch.prefix.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, k)
    with chat_model._state.use("prefix", None, batch.prefix_conditions):
        model(batch.prefix, attention_mask=batch.prefix_mask, past_kv_cache=cache,
              stop_at_layer=stop_at_layer if stop_at_layer is not None else model.cfg.n_layers)
    entries = []
    for e in cache.entries:
        g = batch.group.to(e.past_keys.device)
        if k == 1:
            keys, values = e.past_keys.expand(batch.size, -1, -1, -1), e.past_values.expand(batch.size, -1, -1, -1)
        else:
            keys, values = e.past_keys[g], e.past_values[g]
        entries.append(TransformerLensKeyValueCacheEntry(past_keys=keys, past_values=values, frozen=frozen))
    mask = batch.prefix_mask[batch.group.to(batch.prefix_mask.device)]
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=frozen)


def next_token_logits(model, resid: Float[Tensor, "batch pos d_model"],
                      unembed: Callable[[Tensor], Tensor] | None = None) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only, from the final residual stream.

    Runs ``ln_final`` (and its hooks) on the last position and multiplies by the
    unembedding as ``W_U^T @ x^T``: for a few rows that orientation runs about twice
    as fast on a CPU as TransformerLens' ``x @ W_U`` (measured: 58 vs 28 GFLOP/s at 32
    rows for Qwen's 152k-token vocabulary). ``unembed(x) -> x @ W_U + b_U`` replaces that
    product (a decoding session's own, :meth:`persona_refusal.decoding.DecodeSession.unembed`).
    """
    x = resid[:, -1:, :]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    x = model.unembed.hook_in(x) if hasattr(model.unembed, "hook_in") else x
    x = x[:, 0]
    if unembed is not None:
        logits = unembed(x)
    else:
        w = model.unembed.W_U
        # addmm: the bias is the product's starting value, not a second pass over [rows, d_vocab]
        logits = torch.addmm(model.unembed.b_U.to(w.dtype)[:, None], w.T, x.T.to(w.dtype)).T
    logits = model.unembed.hook_out(logits[:, None])[:, 0]
    from transformer_lens.utilities import apply_softcap

    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def run_plan(
    chat_model: "ChatModel",
    plan: BatchPlan,
    *,
    interventions: Sequence["Intervention"] = (),
    capture: dict[str, Sequence[int] | None] | None = None,
    logits: bool = False,
    stop_at_layer: int | None = None,
    start_layer: int | None = None,
    start_resid: Sequence[Tensor] | None = None,
    keep_resid: bool = False,
    desc: str | None = None,
    progress: bool = True,
) -> Iterator[BatchOutput]:
    """Run a batch plan under interventions; yield what was asked for, batch by batch.

    Args:
        interventions: edits applied during the whole run (prefix included).
        capture: hook name → positions (from the end) to keep, or ``None`` for the whole
            per-row part. Captured after any edit at the same hook.
        logits: keep next-token logits at the last position.
        stop_at_layer: run blocks ``< stop_at_layer`` only (no logits then).
        start_layer, start_resid: start at block ``start_layer`` from these residuals,
            one tensor per batch of ``plan`` (as captured at
            ``blocks.{start_layer}.hook_resid_pre`` with ``capture={name: None}``).
            Interventions acting before ``start_layer`` are not re-applied.
        keep_resid: keep the residual stream where the run stopped.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> plan = plan_batches(cm, cm.format(["Hi", "Hello there"]))
        >>> out = list(run_plan(cm, plan, capture={"blocks.2.hook_resid_pre": [-1]}, logits=True, progress=False))
        >>> out[0].captured["blocks.2.hook_resid_pre"].shape[1:], out[0].last_logits.shape[-1]
        (torch.Size([1, 64]), 384)
    """
    from tqdm.auto import tqdm

    model = chat_model.model
    n_layers = chat_model.n_layers
    if stop_at_layer is not None:
        chat_model.check_layer(stop_at_layer, allow_end=True, what="stop_at_layer")
        if logits and stop_at_layer < n_layers:
            raise ConfigError("logits need the full model: stop_at_layer must be None or n_layers")
    stop = n_layers if stop_at_layer is None else stop_at_layer
    if start_layer is not None:
        chat_model.check_layer(start_layer, what="start_layer")
        if start_resid is None or len(start_resid) != len(plan.batches):
            raise ConfigError("start_resid must hold one tensor per batch of the plan")
    capture = dict(capture or {})
    for name in capture:
        if name not in model.hook_dict:
            raise ConfigError(f"unknown hook point {name!r}")
    with apply(chat_model, *interventions), torch.inference_mode():
        bar = tqdm(total=plan.n_prompts, desc=desc, disable=not progress or desc is None, leave=False)
        try:
            for k, batch in enumerate(plan.batches):
                resid0 = None if start_layer is None else start_resid[k]
                for out in _run_batch(chat_model, batch, capture, logits, stop, start_layer, resid0, keep_resid):
                    bar.update(out.batch.size)
                    yield out
        finally:
            bar.close()


def retry_halving(batch: Batch, run: Callable[[Batch, slice], Any], what: str,
                  rows: slice = slice(None)) -> list[tuple[Batch, Any]]:
    """``[(batch, run(batch, rows))]``; when ``run`` runs out of memory on more than one
    prompt, a warning, then each half of the batch is retried (recursively).

    ``rows`` selects the (half-)batch's rows within the batch first given, for callers that
    slice per-row inputs (e.g. cached residuals) to match.
    """
    try:
        return [(batch, run(batch, rows))]
    except Exception as e:
        if not _is_oom(e) or batch.size == 1:
            raise
    log.warning("out of memory %s a batch of %d prompts; retrying in two halves", what, batch.size)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    start, h = rows.start or 0, batch.size // 2
    parts = (slice(start, start + h), slice(start + h, start + batch.size))
    return [out for half, sl in zip(batch.split(), parts) for out in retry_halving(half, run, what, sl)]


def _run_batch(chat_model, batch: Batch, capture, logits, stop, start_layer, resid0, keep_resid) -> list[BatchOutput]:
    def run(b: Batch, rows: slice) -> BatchOutput:
        r = None if resid0 is None else resid0[rows][:, resid0.shape[1] - b.tokens.shape[1]:]
        return _forward(chat_model, b, capture, logits, stop, start_layer, r, keep_resid)

    return [out for _, out in retry_halving(batch, run, "on")]


def _forward(chat_model, batch: Batch, capture, logits, stop, start_layer, resid0, keep_resid) -> BatchOutput:
    model = chat_model.model
    state = chat_model._state
    cache = _prefix_cache(chat_model, batch, stop)
    captured: dict[str, Tensor] = {}

    def make_hook(name: str, positions):
        def hook(act, hook):
            if state.at_prompt_positions:
                captured[name] = (act if positions is None else act[:, positions]).detach().float().cpu()
            return act
        return hook

    cap_hooks = [(name, make_hook(name, None if pos is None else list(pos))) for name, pos in capture.items()]
    phase = "suffix" if cache is not None else "full"
    with model.hooks(fwd_hooks=cap_hooks), state.use(phase, batch.rows, batch.conditions):
        if start_layer is None:
            resid = model(batch.tokens, attention_mask=batch.mask, past_kv_cache=cache, stop_at_layer=stop)
        else:
            resid = model(resid0.to(device=chat_model.device, dtype=model.cfg.dtype), start_at_layer=start_layer,
                          attention_mask=batch.full_mask(), past_kv_cache=cache, stop_at_layer=stop)
        last = next_token_logits(model, resid).float().cpu() if logits else None
    return BatchOutput(batch, last, captured, resid.detach().float().cpu() if keep_resid else None)


def _resid_runs(chat_model: "ChatModel", instructions: Sequence[str], positions, layers, system, interventions,
                batch_size, desc, progress) -> tuple[list[int], list[int], Iterator[tuple[Tensor, list[Tensor]]]]:
    """Resolve ``positions`` and ``layers`` (defaults: post-instruction positions, every layer)
    and start the batched run that captures ``resid_pre`` there.

    Returns ``(positions, layers, batches)``; each batch is ``(rows, per_layer)``: the
    prompts' indices and, per layer, their activations ``[batch, n_pos, d_model]``.
    """
    positions = list(positions) if positions is not None else chat_model.post_instruction_positions
    layers = list(layers) if layers is not None else list(range(chat_model.n_layers))
    names = [chat_model.hook_name(chat_model.check_layer(int(l)), "resid_pre") for l in layers]
    plan = plan_batches(chat_model, chat_model.format(instructions, system), batch_size=batch_size,
                        keep_last=max(-min(positions), 1))
    outs = run_plan(chat_model, plan, interventions=interventions, capture={n: positions for n in names},
                    stop_at_layer=max(layers) + 1, desc=desc, progress=progress)
    return positions, layers, ((out.batch.rows, [out.captured[n] for n in names]) for out in outs)


def mean_activations(
    chat_model: "ChatModel",
    instructions: Sequence[str],
    *,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    system: str | None = None,
    interventions: Sequence["Intervention"] = (),
    batch_size: int | None = None,
    desc: str | None = "mean activations",
    progress: bool = True,
) -> Float[Tensor, "n_pos n_layers d_model"]:
    """Mean ``resid_pre`` activation over prompts at each (position, layer), in float64.

    Only the requested positions are kept (inside the hook) and summed batch by batch,
    so memory grows with positions × layers × d_model, not with sequence length.

    Args:
        chat_model: the model.
        instructions: the prompts, unformatted.
        positions: positions from the end of the prompt (default: the post-instruction
            template tokens).
        layers: ``resid_pre`` layers (default: every layer).
        system: system prompt used to format the prompts (default: the template's own).
        interventions: edits applied during the run (default: none).
        batch_size: prompts per batch (default: sized by a token budget).
        desc: progress-bar label.
        progress: show a progress bar.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> mean_activations(cm, ["Hi", "Hello there"], positions=[-1], layers=[0, 2], progress=False).shape
        torch.Size([1, 2, 64])
    """
    positions, layers, batches = _resid_runs(chat_model, instructions, positions, layers, system, interventions,
                                             batch_size, desc, progress)
    total = torch.zeros(len(positions), len(layers), chat_model.d_model, dtype=torch.float64)
    for _, per_layer in batches:
        for j, acts in enumerate(per_layer):
            total[:, j] += acts.double().sum(0)
    return total / len(instructions)


def cache_activations(
    chat_model: "ChatModel",
    instructions: Sequence[str],
    *,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    system: str | None = None,
    interventions: Sequence["Intervention"] = (),
    batch_size: int | None = None,
    desc: str | None = "caching activations",
    progress: bool = True,
) -> Float[Tensor, "n_prompts n_pos n_layers d_model"]:
    """Per-prompt ``resid_pre`` activations at each (position, layer), float32, prompt order.

    The arguments are those of :func:`mean_activations`.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> cache_activations(cm, ["Hi", "Hello"], positions=[-2, -1], layers=[1], progress=False).shape
        torch.Size([2, 2, 1, 64])
    """
    positions, layers, batches = _resid_runs(chat_model, instructions, positions, layers, system, interventions,
                                             batch_size, desc, progress)
    out_t = torch.zeros(len(instructions), len(positions), len(layers), chat_model.d_model)
    for rows, per_layer in batches:
        for j, acts in enumerate(per_layer):
            out_t[rows, :, j] = acts
    return out_t
