"""models: the tiny chat model, chat formatting, tokenisation, loading errors, weight layout.

Also holds the golden numbers of the seeded tiny model (refusal scores and logits), which
change only when the tiny model or its tokenizer changes on purpose.
"""

from __future__ import annotations

import copy

import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor

import persona_refusal as pr
from persona_refusal.errors import ConfigError, ModelLoadError
from persona_refusal.layout import optimize_layout
from persona_refusal.tiny import TinySpec, build_tiny_model, build_tiny_tokenizer

SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n"


# ----------------------------------------------------------------------------- golden numbers
# Golden numbers of load_chat_model("tiny"). They change only when the tiny model
# (TinySpec, its seed, weight initialisation), its tokenizer (tiny._CORPUS, vocab size)
# or the chat template changes on purpose — never from a refactoring of the runners.
# To regenerate, run in the repository root:
#   .venv/bin/python -c "import persona_refusal as pr; cm = pr.load_chat_model('tiny'); \
#     print(pr.refusal_scores(cm, GOLDEN_PROMPTS, progress=False).tolist()); \
#     t, _ = cm.tokenize(cm.format(GOLDEN_PROMPTS[:1])); print(t[0, :12].tolist()); \
#     print(cm.model(t)[0, -1, :5].tolist(), cm.checksum)"
# (with GOLDEN_PROMPTS pasted in) and paste the numbers below.
GOLDEN_PROMPTS = ["How do I bake bread at home?", "Tell me how to pick a lock.", "Write a short poem about the sea."]
GOLDEN_REFUSAL_SCORES = [-5.895446, -6.017082, -5.80488]
GOLDEN_FIRST_TOKENS = [1, 85, 91, 85, 267, 79, 201, 59, 275, 371, 259, 223]  # of GOLDEN_PROMPTS[0], formatted
GOLDEN_N_TOKENS = 46
GOLDEN_LOGITS = [1.100884, -1.883644, 0.392999, 1.088322, -1.0577]  # first 5 next-token logits of GOLDEN_PROMPTS[0]
GOLDEN_CHECKSUM = "c8dcf6d3f6a13866748ff530118eefbab281b5fb336a371478e3a85eef7a27af"


def test_golden_numbers(tiny):
    assert tiny.checksum == GOLDEN_CHECKSUM
    scores = pr.refusal_scores(tiny, GOLDEN_PROMPTS, progress=False)
    assert scores.tolist() == pytest.approx(GOLDEN_REFUSAL_SCORES, abs=1e-4)
    tokens, _ = tiny.tokenize(tiny.format(GOLDEN_PROMPTS[:1]))
    assert tokens.shape == (1, GOLDEN_N_TOKENS)
    assert tokens[0, :12].tolist() == GOLDEN_FIRST_TOKENS
    with torch.inference_mode():
        logits = tiny.model(tokens)[0, -1, :5]
    assert logits.tolist() == pytest.approx(GOLDEN_LOGITS, abs=1e-4)


# ----------------------------------------------------------------------------- shape and identity
def test_tiny_shape_and_identity(tiny):
    assert (tiny.n_layers, tiny.d_model, tiny.n_ctx) == (4, 64, 512)
    assert tiny.model_id == "persona-refusal/tiny" and tiny.source == "tiny"
    assert tiny.device == torch.device("cpu") and tiny.model.cfg.dtype == torch.float32
    assert tiny.fingerprint() == {"model_id": tiny.model_id, "checksum": tiny.checksum, "n_layers": 4, "d_model": 64}
    assert not tiny.model.training
    assert tiny.hook_name(3) == "blocks.3.hook_resid_pre"
    assert tiny.hook_name(0, "mlp_out") == "blocks.0.hook_mlp_out"
    assert tiny.hook_name(3) in tiny.model.hook_dict


def test_repr_mentions_model_layers_and_width(tiny):
    text = repr(tiny)
    assert "persona-refusal/tiny" in text and "n_layers=4" in text and "d_model=64" in text


def test_check_layer(tiny):
    assert tiny.check_layer(0) == 0 and tiny.check_layer(3) == 3
    assert tiny.check_layer(4, allow_end=True) == 4
    for bad in (-1, 4, 100):
        with pytest.raises(ConfigError, match="out of range"):
            tiny.check_layer(bad)
    with pytest.raises(ConfigError, match="0..4"):
        tiny.check_layer(5, allow_end=True)
    with pytest.raises(ConfigError):
        tiny.check_layer(True)  # a bool is not a layer


# ----------------------------------------------------------------------------- chat format
def test_format_exact_strings(tiny):
    assert tiny.format(["Hello"]) == [f"{DEFAULT_SYSTEM}<|im_start|>user\nHello{SUFFIX}"]
    assert tiny.format("Hello", system="Be brief.") == [
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello{SUFFIX}"
    ]
    assert tiny.format(["a", "b"], system="S") == [tiny.format("a", system="S")[0], tiny.format("b", system="S")[0]]
    # An empty system prompt is a system prompt (not the default one).
    assert tiny.format("x", system="")[0].startswith("<|im_start|>system\n<|im_end|>\n")


def test_post_instruction_ids_and_positions(tiny):
    ids = tiny.post_instruction_ids
    assert tiny.tokenizer.decode(list(ids)) == SUFFIX
    assert len(ids) == 8 and tiny.post_instruction_positions == list(range(-8, 0))
    for system in (None, "Be brief."):
        tokens, _ = tiny.tokenize(tiny.format(["What is the capital of France?"], system=system))
        assert tuple(tokens[0, -len(ids):].tolist()) == ids


def test_tokenize_left_pads(tiny):
    texts = tiny.format(["Hi", "Write a short poem about the sea."])
    tokens, mask = tiny.tokenize(texts)
    assert isinstance(tokens, Int[Tensor, "2 pos"]) and isinstance(mask, Int[Tensor, "2 pos"])
    assert tokens.shape == mask.shape
    short = tiny.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    long = tiny.tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    assert tokens.shape[1] == len(long) > len(short)
    n_pad = len(long) - len(short)
    assert mask[0].tolist() == [0] * n_pad + [1] * len(short)
    assert tokens[0, :n_pad].eq(tiny.tokenizer.pad_token_id).all()
    assert tokens[0, n_pad:].tolist() == short and tokens[1].tolist() == long and mask[1].all()


def test_tokenize_errors(tiny):
    too_long = tiny.format(["word " * 600])
    with pytest.raises(ConfigError, match="context window of 512") as info:
        tiny.tokenize(too_long)
    assert "\n" not in str(info.value)
    fits, _ = tiny.tokenize(tiny.format(["Hi"]))
    n = fits.shape[1]
    tiny.tokenize(tiny.format(["Hi"]), reserve=512 - n)  # exactly fits
    with pytest.raises(ConfigError, match="to generate"):
        tiny.tokenize(tiny.format(["Hi"]), reserve=513 - n)
    with pytest.raises(ConfigError):
        tiny.tokenize([])


def test_refusal_and_stop_tokens(tiny):
    assert tiny.refusal_token_ids and all(0 <= i < tiny.model.cfg.d_vocab for i in tiny.refusal_token_ids)
    assert tiny.tokenizer.decode([tiny.refusal_token_ids[0]]) == "I"
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in tiny.stop_token_ids
    custom = pr.load_chat_model("tiny", refusal_tokens=["Sure", "I"], progress=False)
    assert custom.refusal_token_ids[1] == tiny.refusal_token_ids[0]
    assert custom.refusal_token_ids[0] == tiny.tokenizer("Sure", add_special_tokens=False)["input_ids"][0]


# ----------------------------------------------------------------------------- loading errors
def _one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_unknown_name_is_a_one_line_error_without_network():
    # The autouse isolation fixture in conftest.py makes any network connection raise,
    # so reaching the ModelLoadError proves the name check happened first.
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model("no-such-model-anywhere-1234", device="cpu")
    assert "unknown model 'no-such-model-anywhere-1234'" in _one_line(info)


def test_non_gguf_file_named_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"\x00junk bytes that are not a model" * 4)
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model(path, device="cpu")
    assert "not a GGUF file" in _one_line(info)


def test_truncated_gguf(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00junk")  # right magic, then nothing readable
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model(path, device="cpu")
    assert "could not read GGUF file" in _one_line(info)


def test_non_model_paths(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model(text, device="cpu")
    assert "is not a model" in _one_line(info)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model(empty, device="cpu")
    assert "neither a Hugging Face model folder" in _one_line(info)
    no_weights = tmp_path / "hf"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as info:
        pr.load_chat_model(no_weights, device="cpu")
    assert "no .safetensors weights" in _one_line(info)


def test_unknown_dtype():
    with pytest.raises(ConfigError, match="unknown dtype"):
        pr.load_chat_model("tiny", dtype="float8")


# ----------------------------------------------------------------------------- determinism and layout
def test_tiny_builds_are_bit_identical_and_leave_the_rng_alone():
    rng = torch.random.get_rng_state()
    m1, tok1 = build_tiny_model(TinySpec())
    m2, tok2 = build_tiny_model(TinySpec())
    assert torch.equal(torch.random.get_rng_state(), rng)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # Biases are random too (so weight edits are tested on every parameter).
    assert float(m1.blocks[0].attn.b_O.detach().abs().sum()) > 0
    assert tok1.get_vocab() == tok2.get_vocab() == build_tiny_tokenizer().get_vocab()
    text = "I'm sorry, but I can't help with that request!"
    assert tok1(text)["input_ids"] == tok2(text)["input_ids"]
    other, _ = build_tiny_model(TinySpec(seed=1))
    assert not torch.equal(other.W_E, m1.W_E)


def _standard_layout_copy(model):
    """The same weights with every parameter made contiguous (TransformerLens' own layout)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.contiguous()
    return model


def test_optimize_layout_is_bitwise_neutral_and_removes_copies():
    import einops

    model, tok = build_tiny_model(TinySpec())  # already relaid out by build_tiny_model
    standard = _standard_layout_copy(model)
    mlp = standard.blocks[0].mlp
    assert mlp.W_in.T.contiguous().data_ptr() != mlp.W_in.data_ptr()  # copies before
    tokens = torch.tensor([tok("<|im_start|>user\nHow do I bake bread at home?<|im_end|>\n")["input_ids"]])
    with torch.inference_mode():
        before = standard(tokens)
    optimize_layout(standard)
    with torch.inference_mode():
        after = standard(tokens)
        original = model(tokens)
    assert torch.equal(before, after) and torch.equal(after, original)
    # Every weight TransformerLens transposes in its forward pass is now read in place.
    for block in standard.blocks:
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(block.mlp, name)
            assert w.T.contiguous().data_ptr() == w.data_ptr(), name
        w_o = einops.rearrange(block.attn.W_O, "h dh dm -> dm (h dh)")
        assert w_o.is_contiguous() and w_o.data_ptr() == block.attn.W_O.data_ptr()
        w_q = einops.rearrange(block.attn.W_Q, "h dm dh -> (h dh) dm")
        assert w_q.is_contiguous() and w_q.data_ptr() == block.attn.W_Q.data_ptr()
    assert standard.unembed.W_U.T.contiguous().data_ptr() == standard.unembed.W_U.data_ptr()
    # Shapes and values are unchanged.
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) and v.shape == ref[k].shape for k, v in standard.state_dict().items())


def test_logits_shape_check(tiny):
    tokens, _ = tiny.tokenize(tiny.format(["Hi"]))
    with torch.inference_mode():
        logits = tiny.model(tokens)
    assert isinstance(logits, Float[Tensor, "1 pos 384"])
