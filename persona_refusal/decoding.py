"""Fast decoding steps: the one-token forward passes of greedy generation, near the
matrix-product limit of a CPU.

Context
-------
Generating a reply is one forward pass over the prompt (the *prefill*) and then one pass
per new token (a *decoding step*) that pushes a single token per row through every block.
TransformerLens' forward is right for both but slow for the second on the usual chat-model
block (pre-norm RMSNorm, rotary attention with grouped key/value heads, gated MLP): on
every step it re-applies the rotary embedding to every cached key, expands the grouped
key/value heads (``repeat_interleave``) and concatenates the KV cache, and its products go
to MKL, which runs decoding's skinny ``[rows, d_model] × [d_model, n]`` shapes at about
half of its square-product peak on the CPUs measured here.

:class:`DecodeSession` takes over after the prefill (which stays TransformerLens'). It
keeps the *rotated* keys and the values in buffers allocated once for the whole reply,
attends with grouped heads without expanding them, and multiplies through oneDNN, whose
kernels run these shapes near the peak; with ``mode="packed"`` each weight matrix is
reordered once into oneDNN's blocked layout (a second copy of the weights, kept until
:func:`release`), with ``"plain"`` the model's own weights are read as they are.
``"reference"`` is TransformerLens' forward itself.

Every hook point TransformerLens calls in a decoding step is called here too, in the same
order and on tensors of the same shapes, so interventions (:mod:`persona_refusal.interventions`)
and captures act exactly as in ``model(...)``. Two differences, both documented in
:func:`start`: ``ln1``'s hooks fire once per block (TransformerLens normalises the same
input three times, for queries, keys and values), and a hook on ``attn.hook_rot_k`` gets a
copy of the cached rotated keys, so its edits last one step — as they do in
TransformerLens, which rotates the keys anew each step. Results equal the reference path's
up to float rounding (different kernels sum in a different order): greedy tokens agree
except at near-ties of the two best logits. Blocks or hooks this path does not cover use
the reference path; :func:`unsupported` says why.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from persona_refusal.errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

__all__ = ["DECODE_MODES", "DecodeSession", "start", "unsupported", "release", "check_mode"]

log = logging.getLogger(__name__)

DECODE_MODES: tuple[str, ...] = ("packed", "plain", "reference")
"""How decoding steps run: ``packed`` (this module, weights reordered once for oneDNN;
fastest, a second copy of the weight matrices), ``plain`` (this module, the model's own
weights; no extra memory), ``reference`` (TransformerLens' forward)."""

PACK_ROWS = 32
"""Row count oneDNN is told to expect when it reorders a weight (any count works)."""

_BLOCK_HOOKS = frozenset({
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
    "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
})
_MODEL_HOOKS = frozenset({"hook_embed"})
"""Hook points a decoding step here calls (blocks' names without ``blocks.{l}.``). The final
norm and the unembedding are the caller's (:func:`persona_refusal.activations.next_token_logits`)."""


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`DECODE_MODES`, else a one-line error."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"unknown decoding mode {mode!r}", hint=f"use one of {', '.join(DECODE_MODES)}")
    return mode


def unsupported(model: "HookedTransformer") -> str | None:
    """Why decoding steps of ``model`` must use TransformerLens' forward (``None``: they
    need not): a block this module does not implement, or a hook on a point it does not call.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> unsupported(cm.model) is None
        True
    """
    cfg = model.cfg
    checks: list[tuple[bool, str]] = [
        (cfg.positional_embedding_type != "rotary", f"positional embedding {cfg.positional_embedding_type!r}"),
        (cfg.normalization_type not in ("RMS", "RMSPre"), f"normalization {cfg.normalization_type!r}"),
        (not cfg.gated_mlp or cfg.act_fn not in ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh"),
         "an MLP other than a gated silu/gelu one"),
        (cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"), "OLMo QK-norm"),
        (bool(cfg.use_normalization_before_and_after), "norms after attention and MLP as well as before (Gemma 2/3)"),
        (bool(cfg.attn_only or cfg.parallel_attn_mlp or cfg.use_attn_result or cfg.use_split_qkv_input
              or cfg.use_attn_in or cfg.use_hook_mlp_in or cfg.use_normalization_before_and_after
              or getattr(cfg, "use_hook_tokens", False)), "a block option (attn_only, parallel, split inputs, ...)"),
        (cfg.num_experts is not None, "mixture-of-experts MLP"),
        (cfg.attention_dir != "causal" or cfg.attn_types is not None or getattr(cfg, "use_local_attn", False)
         or getattr(cfg, "window_size", None) is not None, "local or non-causal attention"),
        (bool(cfg.use_logn_attn or cfg.use_attention_sinks or cfg.clip_qkv is not None
              or getattr(cfg, "use_dynamic_ntk_rope", False) or cfg.attn_scores_soft_cap > 0
              or cfg.output_logits_soft_cap > 0), "an attention or logit variant (logn, sinks, clipping, soft caps)"),
        (cfg.ungroup_grouped_query_attention, "ungrouped key/value heads"),
        (cfg.n_devices > 1, "a model split over several devices"),
        (cfg.load_in_4bit, "4-bit weights"),
    ]
    for bad, why in checks:
        if bad:
            return why
    for name, hp in model.hook_dict.items():
        if not (hp._forward_hooks or hp._forward_pre_hooks):
            continue
        short = name.split(".", 2)[2] if name.startswith("blocks.") else name
        if short not in _BLOCK_HOOKS and short not in _MODEL_HOOKS and not short.startswith(("ln_final.", "unembed.")):
            return f"a hook on {name}"
    return None


# ------------------------------------------------------------------ weights


def _dnn_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _torch_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return F.linear(x, w, b)


def _dnn_works(dtype: torch.dtype, packed: bool) -> bool:
    """Whether oneDNN's linear runs here for ``dtype`` (and reorders, if ``packed``) and
    agrees with ``F.linear`` on a small product."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 16, generator=g).to(dtype)
        w = torch.randn(8, 16, generator=g).to(dtype)
        b = torch.randn(8, generator=g).to(dtype)
        ww = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS) if packed else w
        y = _dnn_linear(x, ww, b)
        return bool(torch.allclose(y.float(), F.linear(x, w, b).float(), atol=5e-2, rtol=5e-2))
    except Exception:  # noqa: BLE001 - no oneDNN, or not for this dtype / CPU: plain torch products
        return False


class _Weights:
    """The weight matrices of every block as ``[n_out, n_in]`` operands, with the linear
    function that takes them (oneDNN, packed or plain, or ``F.linear``)."""

    def __init__(self, model: "HookedTransformer", mode: str) -> None:
        device, dtype = model.W_E.device, model.W_E.dtype
        use_dnn = device.type == "cpu" and torch.backends.mkldnn.is_available()
        packed = mode == "packed" and use_dnn and _dnn_works(dtype, True)
        use_dnn = use_dnn and (packed or _dnn_works(dtype, False))
        self.linear: Callable[[Tensor, Tensor, Tensor | None], Tensor] = _dnn_linear if use_dnn else _torch_linear
        self.kind = "onednn-packed" if packed else "onednn" if use_dnn else "torch"
        self.key = _weights_key(model)

        def prep(w: Tensor) -> Tensor:
            w = w.detach()
            if not w.is_contiguous():
                w = w.contiguous()
            return torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS) if packed else w

        self.blocks: list[dict[str, Tensor]] = []
        for block in model.blocks:
            a, m = block.attn, block.mlp
            h, dm, dh = a.W_Q.shape
            # grouped-query attention keeps one key/value head per group (as TransformerLens reads them)
            grouped = hasattr(a, "_W_K")
            wk, wv = (a._W_K, a._W_V) if grouped else (a.W_K, a.W_V)
            bk, bv = (a._b_K, a._b_V) if grouped else (a.b_K, a.b_V)
            self.blocks.append({
                "bq": a.b_Q.detach().reshape(-1), "bk": bk.detach().reshape(-1), "bv": bv.detach().reshape(-1),
                "q": prep(a.W_Q.permute(0, 2, 1).reshape(h * dh, dm)),
                "k": prep(wk.permute(0, 2, 1).reshape(-1, dm)),
                "v": prep(wv.permute(0, 2, 1).reshape(-1, dm)),
                "o": prep(a.W_O.reshape(h * dh, dm).T),
                "gate": prep(m.W_gate.T),
                "in": prep(m.W_in.T),
                "out": prep(m.W_out.T),
            })
        self.unembed = prep(model.unembed.W_U.T)


def _weights_key(model: "HookedTransformer") -> tuple:
    """Identity of the model's weights: storage and in-place version of every parameter
    (an in-place edit such as :func:`~persona_refusal.interventions.orthogonalize_weights`
    changes it; edits through ``.data`` do not, so call :func:`release` after those)."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


_PREPARED: "weakref.WeakKeyDictionary[HookedTransformer, dict[str, _Weights]]" = weakref.WeakKeyDictionary()


def _weights(model: "HookedTransformer", mode: str) -> _Weights:
    per_model = _PREPARED.setdefault(model, {})
    w = per_model.get(mode)
    if w is None or w.key != _weights_key(model):
        per_model.pop(mode, None)  # free the stale copy before building the new one
        w = per_model[mode] = _Weights(model, mode)
        log.debug("decoding weights prepared: %s (%s)", mode, w.kind)
    return w


def release(model: "HookedTransformer") -> None:
    """Forget the decoding weights prepared for ``model`` (frees the packed copy)."""
    _PREPARED.pop(model, None)


# ------------------------------------------------------------------ the session


class DecodeSession:
    """Decoding steps of one batch after its prefill: rotated keys and values in buffers
    for ``max_new_tokens`` more positions, one :meth:`step` per new token.

    Build it with :func:`start`. The prefill's TransformerLens cache is read once and not
    used afterwards.
    """

    def __init__(self, model: "HookedTransformer", cache: "TransformerLensKeyValueCache", max_new_tokens: int,
                 weights: _Weights) -> None:
        self.model, self.w = model, weights
        cfg = model.cfg
        mask = cache.previous_attention_mask.bool()
        b, n = mask.shape
        self.length = n
        self.mask = torch.zeros(b, n + max_new_tokens, dtype=torch.bool, device=mask.device)
        self.mask[:, :n] = mask
        self.pos = mask.sum(1)  # position id of each row's next token (real tokens so far)
        need, have = int(self.pos.max()) + max_new_tokens, model.blocks[0].attn.rotary_cos.shape[0]
        if need > have:  # as TransformerLens does when a sequence outgrows its rotary tables
            for block in model.blocks:
                block.attn._extend_rotary_embeddings(min(cfg.n_ctx, max(need, 2 * have)))
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        for block, entry in zip(model.blocks, cache.entries):
            a = block.attn
            k = a.apply_rotary(entry.past_keys, 0, mask.long())  # exactly TransformerLens' next-step keys
            kv = k.shape[2]
            keys = k.new_zeros(b, kv, n + max_new_tokens, cfg.d_head)
            values = keys.clone()
            keys[:, :, :n] = k.permute(0, 2, 1, 3)
            values[:, :, :n] = entry.past_values.permute(0, 2, 1, 3)
            self.keys.append(keys)
            self.values.append(values)

    @property
    def rows(self) -> int:
        """Rows still decoding."""
        return int(self.mask.shape[0])

    def select_rows(self, keep: Int[Tensor, "kept"]) -> None:
        """Keep only these rows (finished rows leave the batch)."""
        idx = keep.to(self.mask.device)
        self.mask, self.pos = self.mask[idx], self.pos[idx]
        self.keys = [k[idx] for k in self.keys]
        self.values = [v[idx] for v in self.values]

    def _rotate(self, attn, x: Tensor) -> Tensor:
        """Rotary embedding of the new token (``x``: [batch, 1, heads, d_head]) at each
        row's own position, computed as TransformerLens computes it."""
        rd = self.model.cfg.rotary_dim
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        cos = attn.rotary_cos[self.pos][:, None, None, :]
        sin = attn.rotary_sin[self.pos][:, None, None, :]
        return torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)

    def step(self, tokens: Int[Tensor, "batch"]) -> Float[Tensor, "batch 1 d_model"]:
        """Run one new token per row through every block; returns the final residual
        stream (``[batch, 1, d_model]``, before ``ln_final``) and advances the buffers."""
        model, cfg, lin = self.model, self.model.cfg, self.w.linear
        b, d, h, dh = tokens.shape[0], cfg.d_model, cfg.n_heads, cfg.d_head
        t = self.length
        self.mask[:, t] = True
        mask = self.mask[:, :t + 1]
        x = model.hook_embed(model.embed(tokens[:, None]))
        for block, w, keys, values in zip(model.blocks, self.w.blocks, self.keys, self.values):
            a, m = block.attn, block.mlp
            x = block.hook_resid_pre(x)
            n = block.ln1(x).reshape(b, d)
            kv = keys.shape[1]
            q = a.hook_q(lin(n, w["q"], w["bq"]).view(b, 1, h, dh))
            k = a.hook_k(lin(n, w["k"], w["bk"]).view(b, 1, kv, dh))
            v = a.hook_v(lin(n, w["v"], w["bv"]).view(b, 1, kv, dh))
            if cfg.use_qk_norm:
                q, k = a._apply_qk_norm(q, a.q_norm), a._apply_qk_norm(k, a.k_norm)
            q = a.hook_rot_q(self._rotate(a, q))
            keys[:, :, t] = self._rotate(a, k)[:, 0]
            values[:, :, t] = v[:, 0]
            kt, vt = keys[:, :, :t + 1], values[:, :, :t + 1]  # [batch, kv, t+1, d_head]
            if a.hook_rot_k._forward_hooks:  # TransformerLens' shape, a copy: edits last one step
                kt = a.hook_rot_k(kt.permute(0, 2, 1, 3).clone()).permute(0, 2, 1, 3)
            g = h // kv
            scores = torch.matmul(q.view(b, kv, g, dh), kt.transpose(-1, -2)) / a.attn_scale  # [b, kv, g, t+1]
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
            scores = a.hook_attn_scores(scores.view(b, h, 1, t + 1))
            pattern = F.softmax(scores, dim=-1)
            pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
            pattern = a.hook_pattern(pattern).to(vt.dtype)
            z = a.hook_z(torch.matmul(pattern.view(b, kv, g, t + 1), vt).view(b, 1, h, dh))
            attn_out = block.hook_attn_out(lin(z.reshape(b, h * dh), w["o"], a.b_O).view(b, 1, d))
            x = block.hook_resid_mid(x + attn_out)
            n2 = block.ln2(x).reshape(b, d)
            pre = m.hook_pre(lin(n2, w["gate"], None).view(b, 1, -1))
            pre_linear = m.hook_pre_linear(lin(n2, w["in"], None).view(b, 1, -1))
            post = m.hook_post(m.act_fn(pre) * pre_linear + m.b_in)
            mlp_out = block.hook_mlp_out(lin(post.reshape(b, -1), w["out"], m.b_out).view(b, 1, d))
            x = block.hook_resid_post(x + mlp_out)
        self.length = t + 1
        self.pos = self.pos + 1
        return x

    def unembed(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_vocab"]:
        """``x @ W_U + b_U`` with this session's linear function (``x``: after ``ln_final``)."""
        u = self.model.unembed
        return self.w.linear(x.to(u.W_U.dtype), self.w.unembed, u.b_U)


def start(model: "HookedTransformer", cache: "TransformerLensKeyValueCache", max_new_tokens: int,
          mode: str = "packed") -> DecodeSession | None:
    """A :class:`DecodeSession` continuing from a prefill's KV cache, or ``None`` when the
    decoding steps must use TransformerLens' forward (``mode="reference"``, or
    :func:`unsupported` gives a reason).

    Call it inside the ``apply(...)`` block whose hooks the steps should run with (which
    hook points carry hooks decides whether this path covers them). The packed or plain
    weights are prepared at the first call for a model and reused while its parameters
    are unchanged.
    """
    check_mode(mode)
    if mode == "reference":
        return None
    why = unsupported(model)
    if why is not None:
        log.debug("decoding with TransformerLens' forward: %s", why)
        return None
    return DecodeSession(model, cache, max_new_tokens, _weights(model, mode))
