"""The first load's conversion: block-by-block weight processing equals TransformerLens'
whole-model processing bit for bit, on small random models of several architectures."""

from __future__ import annotations

import copy
import json
import os
import tempfile

import pytest
import torch
import transformer_lens.loading_from_pretrained as loading
from transformer_lens.weight_processing import ProcessWeights

from persona_refusal import models

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             vocab_size=300, max_position_embeddings=128)

ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **SMALL),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, **SMALL),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **SMALL),
}


def _tl_state(hf_cfg) -> tuple:
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval().requires_grad_(False)
    with torch.no_grad():  # random biases and norm weights, so that folding has work to do
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    d = hf.config.to_dict()
    d["architectures"] = [type(hf).__name__]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(d, f)
        cfg = loading.get_pretrained_model_config(tmp, dtype=torch.float32, fold_ln=True, device="cpu")
        state = loading.get_pretrained_state_dict(tmp, cfg, hf_model=hf, dtype=torch.float32)
    cfg.tokenizer_name = None  # as _convert_hf does: the tokenizer comes from the chat model
    return cfg, {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_block_by_block_processing_equals_transformer_lens(arch):
    cfg, state = _tl_state(ARCHITECTURES[arch]())
    assert cfg.original_architecture in models._BLOCKWISE  # else both sides are the same code
    models._fill_missing(cfg, state)
    whole = ProcessWeights.process_weights({k: v.clone() for k, v in state.items()}, copy.copy(cfg),
                                           **models._PROCESSING)
    ours = models._process_weights(state, copy.copy(cfg))
    assert state == {}  # every tensor was moved out
    assert sorted(ours) == sorted(whole)
    differ = [k for k in whole if not torch.equal(ours[k], whole[k])]
    assert not differ, f"{arch}: {differ[:5]}"
    # and the processing did change something, so the comparison is not vacuous
    assert any(not torch.equal(ours[k], state_k) for k, state_k in _tl_state(ARCHITECTURES[arch]())[1].items()
               if k in ours)


def test_converted_model_matches_transformers_logits(tmp_path):
    """The whole first-load path (``_convert_hf`` + ``_assemble``) gives the logits of the
    transformers model it was converted from."""
    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_config(ARCHITECTURES["qwen2"]()).eval()
    tokens = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        want = hf(tokens).logits
    tok = object()
    cfg, state, _ = models._convert_hf(lambda: (hf, tok))
    model = models._assemble(cfg, state, None, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        got = model(tokens)
    # TransformerLens centres the unembedding: logits agree up to a per-position constant.
    got, want = got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_assembled_model_in_half_precision(dtype):
    """``_assemble`` with a half-precision dtype (the path of ``load_chat_model(..., dtype=)``
    for every converted model) casts every weight and keeps the logits of the float32 model
    within half-precision rounding."""
    torch.manual_seed(2)
    hf = transformers.AutoModelForCausalLM.from_config(ARCHITECTURES["qwen2"]()).eval()
    tokens = torch.randint(0, 300, (2, 9))
    ref = models._assemble(*models._convert_hf(lambda: (hf, object()))[:2], None, device="cpu", dtype=torch.float32)
    half = models._assemble(*models._convert_hf(lambda: (hf, object()))[:2], None, device="cpu", dtype=dtype)
    assert half.cfg.dtype == dtype and {p.dtype for p in half.parameters()} == {dtype}
    w32, w16 = ref.blocks[0].mlp.W_in, half.blocks[0].mlp.W_in
    assert w16.stride() == w32.stride()  # the layout of optimize_layout survives the cast
    with torch.no_grad():
        want, got = ref(tokens), half(tokens).float()
    scale = want.abs().max()
    assert (got - want).abs().max() < 0.05 * scale
