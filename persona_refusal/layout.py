"""Weight memory layout for TransformerLens' forward pass — bit-for-bit neutral, faster.

Context
-------
TransformerLens stores weights in the layout its maths is written in and transposes some of
them on every forward pass; :func:`optimize_layout` stores them the way they are read
instead. It sits below :mod:`persona_refusal.tiny` and :mod:`persona_refusal.models`, which
both call it on every model they build.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["optimize_layout"]


def optimize_layout(model) -> None:
    """Store weights in the memory layout TransformerLens' forward pass reads them in.

    TransformerLens' forward transposes several weights and calls ``.contiguous()`` on
    them (``W_Q``/``W_K``/``W_V``/``W_O`` in attention, ``W_gate``/``W_in``/``W_out`` in the MLP,
    ``W_U`` in the unembedding), which copies every weight matrix on every forward pass:
    about a quarter of a prefill pass and most of a one-token decoding step on a CPU.
    Here each parameter gets the strides of that transposed layout (same shape, same
    values), so those ``.contiguous()`` calls return the tensor itself. Results are bit
    for bit the same: the matrix products see identical contiguous operands.
    """

    def relayout(module, name: str, make) -> None:
        p = getattr(module, name, None)
        if not isinstance(p, nn.Parameter) or p.ndim < 2:
            return
        new = make(p.data)
        assert new.shape == p.shape
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))

    def qkv(w):  # [h, d_model, d_head] read as (h d_head) d_model
        h, dm, dh = w.shape
        return w.permute(0, 2, 1).contiguous().reshape(h, dh, dm).permute(0, 2, 1)

    def out_proj(w):  # [h, d_head, d_model] read as d_model (h d_head)
        h, dh, dm = w.shape
        return w.reshape(h * dh, dm).T.contiguous().T.reshape(h, dh, dm)

    def transposed(w):  # [in, out] read as [out, in]
        return w.T.contiguous().T

    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                relayout(attn, name, qkv)
            relayout(attn, "W_O", out_proj)
            mlp = getattr(block, "mlp", None)
            if mlp is not None:
                for name in ("W_gate", "W_in", "W_out"):
                    relayout(mlp, name, transposed)
        relayout(model.unembed, "W_U", transposed)
