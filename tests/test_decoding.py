"""The fast decoding path (persona_refusal/decoding.py) against TransformerLens' forward.

Every test compares a decoding mode with ``reference`` (TransformerLens' own forward with
its KV cache): per-step logits on random models of several block variants, generated
texts under interventions on the tiny chat model, every hook point's activations, the
fallback for blocks and hooks the path does not cover, and the packed weights following
in-place weight edits.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import persona_refusal as pr
from persona_refusal import decoding
from persona_refusal.activations import next_token_logits
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import generate_conditions, generate_details
from persona_refusal.interventions import orthogonalize_weights
from persona_refusal.layout import optimize_layout

FAST = ("packed", "plain")


def _random_model(layout: bool = True, **overrides) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=48, n_heads=4, d_head=12, n_key_value_heads=2, d_mlp=96, d_vocab=97, n_ctx=64,
               act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
               rotary_dim=12, seed=3, init_weights=True, device="cpu")
    cfg.update(overrides)
    torch.manual_seed(cfg["seed"])
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    with torch.no_grad():  # non-zero biases, so that every bias takes part
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.copy_(0.05 * torch.randn_like(p))
    if layout:
        optimize_layout(model)
    return model.eval()


def _step_logits(model: HookedTransformer, mode: str, steps: int = 6, drop_row_at: int = 3):
    """Logits of ``steps`` decoding steps after a left-padded prefill, with TransformerLens'
    forward and with ``mode``; row 1 leaves the batch at step ``drop_row_at``."""
    g = torch.Generator().manual_seed(0)
    b, n = 3, 7
    tokens = torch.randint(0, model.cfg.d_vocab, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, :3] = 0  # left padding of different lengths
    mask[2, :1] = 0
    ref_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, b)
    fast_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, b)
    ref, fast = [], []
    with torch.inference_mode():
        model(tokens, attention_mask=mask, past_kv_cache=ref_cache)
        model(tokens, attention_mask=mask, past_kv_cache=fast_cache)
        session = decoding.start(model, fast_cache, steps, mode)
        assert session is not None, decoding.unsupported(model)
        nxt = torch.randint(0, model.cfg.d_vocab, (b,), generator=g)
        for step in range(steps):
            if step == drop_row_at:
                keep = torch.tensor([0, 2])
                nxt = nxt[keep]
                session.select_rows(keep)
                for e in ref_cache.entries:
                    e.past_keys, e.past_values = e.past_keys[keep], e.past_values[keep]
                ref_cache.previous_attention_mask = ref_cache.previous_attention_mask[keep]
            ones = torch.ones(nxt.shape[0], 1, dtype=torch.long)
            r = model(nxt[:, None], attention_mask=ones, past_kv_cache=ref_cache)[:, -1]
            f = next_token_logits(model, session.step(nxt), session.unembed)
            ref.append(r)
            fast.append(f)
            nxt = r.argmax(-1)
    return ref, fast


VARIANTS = {
    "grouped-query (Qwen2/Llama 3)": {},
    "multi-head, no grouping": {"n_key_value_heads": None},
    "partial rotary": {"rotary_dim": 8},
    "adjacent rotary pairs (GPT-J style)": {"rotary_adjacent_pairs": True},
    "folded norm (RMSPre)": {"normalization_type": "RMSPre"},
    "gelu gate": {"act_fn": "gelu_new"},
    "QK-norm (Qwen3)": {"use_qk_norm": True},
}


@pytest.mark.parametrize("mode", FAST)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_logits_equal_transformer_lens(variant, mode):
    ref, fast = _step_logits(_random_model(**VARIANTS[variant]), mode)
    for step, (r, f) in enumerate(zip(ref, fast)):
        assert f.shape == r.shape
        assert torch.allclose(f, r, atol=1e-4, rtol=1e-4), (step, float((f - r).abs().max()))


def test_step_logits_without_the_package_layout():
    """A HookedTransformer built elsewhere (weights in TransformerLens' own layout)."""
    ref, fast = _step_logits(_random_model(layout=False), "packed")
    assert all(torch.allclose(f, r, atol=1e-4, rtol=1e-4) for r, f in zip(ref, fast))


def test_prompt_longer_than_the_rotary_tables_grow_them_as_transformer_lens_does():
    model = _random_model(n_ctx=64)
    for block in model.blocks:  # start with short tables, as after a long-context model is capped
        block.attn.rotary_cos, block.attn.rotary_sin = block.attn.rotary_cos[:8], block.attn.rotary_sin[:8]
    ref, fast = _step_logits(model, "packed", steps=6)
    assert model.blocks[0].attn.rotary_cos.shape[0] >= 13
    assert all(torch.allclose(f, r, atol=1e-4, rtol=1e-4) for r, f in zip(ref, fast))


# ---------------------------------------------------------------- the tiny chat model

@pytest.fixture
def cm(tiny):
    m = copy.copy(tiny)  # the session fixture's decode mode is never changed
    return m


def _texts(cm, mode, prompts, **kw):
    cm.decode = mode
    return generate_details(cm, prompts, max_new_tokens=12, progress=False, **kw)


@pytest.mark.parametrize("mode", FAST)
def test_generation_under_interventions_equals_reference(cm, prompts, make_direction, mode):
    d = make_direction(model=cm, seed=5)
    edits = {"none": [], "ablate": [pr.Ablate(d)], "add": [pr.AddVector(d, 3.0, layer=1)],
             "affine": [pr.AffineEdit(d, alpha=0.5, layers=[2])]}
    for name, ivs in edits.items():
        ref = _texts(cm, "reference", prompts, interventions=ivs, system="Be brief.")
        got = _texts(cm, mode, prompts, interventions=ivs, system="Be brief.")
        assert got.texts == ref.texts, name
        assert torch.allclose(got.first_scores, ref.first_scores)  # the prefill is shared


@pytest.mark.parametrize("mode", FAST)
def test_multi_condition_batches_and_early_stopping_equal_reference(cm, prompts, make_direction, mode):
    d = make_direction(model=cm, seed=6)
    conds = [[], [pr.AddVector(d, 4.0, layer=1)], [pr.Ablate(d)]]
    stop = lambda text: len(text) > 15  # noqa: E731 - rows stop at different steps
    out = {}
    for m in ("reference", mode):
        cm.decode = m
        out[m] = [g.texts for g in generate_conditions(cm, prompts, conds, max_new_tokens=14, stop_when=stop,
                                                       progress=False)]
    assert out[mode] == out["reference"]
    assert out[mode][0] != out[mode][1]  # the conditions differ, so the routing of edits to rows is tested


def _record_every_hook(model, store):
    names = [n for n in model.hook_dict if n.split(".", 2)[-1] in decoding._BLOCK_HOOKS or n == "hook_embed"]

    def hook(act, hook):
        if act.shape[1] == 1 or hook.name.endswith(("hook_attn_scores", "hook_pattern")):
            store.setdefault(hook.name, []).append(act.detach().clone())
        return act

    return [(n, hook) for n in names]


def test_every_hook_point_sees_what_it_sees_in_transformer_lens(cm, prompts):
    seen = {}
    for mode in ("reference", "packed"):
        store: dict[str, list] = {}
        cm.decode = mode
        with cm.model.hooks(fwd_hooks=_record_every_hook(cm.model, store)):
            generate_details(cm, prompts[:3], max_new_tokens=4, progress=False, batch_size=3)
        seen[mode] = store
    ref, fast = seen["reference"], seen["packed"]
    assert set(ref) == set(fast)
    for name in ref:
        r = ref[name]
        if ".ln1." in name:  # TransformerLens normalises the block input three times (q, k, v inputs)
            r = r[::3]
        f = fast[name][-len(r):]
        assert [t.shape for t in f] == [t.shape for t in r[-len(f):]], name
        last_r, last_f = r[-1], f[-1]
        if name.endswith("hook_attn_scores"):  # -inf at padded keys on both sides
            finite = torch.isfinite(last_r)
            assert torch.equal(finite, torch.isfinite(last_f)), name
            last_r, last_f = last_r[finite], last_f[finite]
        assert torch.allclose(last_f, last_r, atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("mode", FAST)
def test_an_edit_of_the_rotated_keys_lasts_one_step_as_in_transformer_lens(cm, prompts, mode):
    def damp_keys(act, hook):
        return act * 0.3

    hooks = [(f"blocks.{l}.attn.hook_rot_k", damp_keys) for l in range(cm.n_layers)]
    out = {}
    for m in ("reference", mode):
        cm.decode = m
        with cm.model.hooks(fwd_hooks=hooks):
            out[m] = generate_details(cm, prompts, max_new_tokens=10, progress=False).texts
    assert out[mode] == out["reference"]
    cm.decode = mode
    assert generate_details(cm, prompts, max_new_tokens=10, progress=False).texts != out[mode]  # the edit matters


def test_uncovered_blocks_and_hooks_use_the_reference_path(cm, prompts):
    assert decoding.unsupported(cm.model) is None
    with cm.model.hooks(fwd_hooks=[("blocks.1.attn.hook_result", lambda a, hook: a)]):
        assert decoding.unsupported(cm.model) == "a hook on blocks.1.attn.hook_result"
    model = _random_model(normalization_type="LN")
    assert "normalization" in decoding.unsupported(model)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    assert decoding.start(model, cache, 4, "packed") is None
    assert decoding.start(cm.model, cache, 4, "reference") is None
    # a per-head result hook still fires, through TransformerLens' forward
    calls = []
    cm.decode = "packed"
    with cm.model.hooks(fwd_hooks=[("blocks.1.attn.hook_result", lambda a, hook: calls.append(a.shape[1]) or a)]):
        cm.model.cfg.use_attn_result = True
        try:
            generate_details(cm, prompts[:2], max_new_tokens=4, progress=False)
        finally:
            cm.model.cfg.use_attn_result = False
    assert calls.count(1) == 3  # three decoding steps after the prompt's pass


def test_packed_weights_follow_in_place_weight_edits(tiny, prompts, make_direction):
    cm = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))  # edited below: a private copy
    cm.decode = "packed"
    before = generate_details(cm, prompts, max_new_tokens=10, progress=False).texts
    orthogonalize_weights(cm, make_direction(model=cm, seed=7), inplace=True)
    after = generate_details(cm, prompts, max_new_tokens=10, progress=False).texts
    cm.decode = "reference"
    assert after == generate_details(cm, prompts, max_new_tokens=10, progress=False).texts
    assert after != before
    decoding.release(cm.model)
    assert cm.model not in decoding._PREPARED


def test_bfloat16_steps_agree_with_transformer_lens_to_its_precision():
    model = _random_model(dtype=torch.bfloat16)
    ref, fast = _step_logits(model, "packed")
    for r, f in zip(ref, fast):
        assert f.dtype == r.dtype == torch.bfloat16
        scale = float(r.float().abs().max())
        assert float((f.float() - r.float()).abs().max()) <= 0.05 * scale + 0.05


def test_decode_mode_is_checked():
    with pytest.raises(ConfigError, match="unknown decoding mode 'fast'"):
        pr.load_chat_model("tiny", decode="fast")
    with pytest.raises(ConfigError, match="unknown decoding mode"):
        decoding.check_mode("")
    assert pr.load_chat_model("tiny", decode="plain").decode == "plain"
