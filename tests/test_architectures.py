"""Local models of every tested architecture load through one path.

Seeded random-weight twins (tests/twins.py: transformers' own config classes, tiny sizes, no
download) of Qwen2, Qwen3, Llama, Mistral, Phi-3, Gemma 2 and Gemma 3, each as a Hugging Face
folder and as a GGUF file: the configuration is matched by architecture and shapes, the
converted ``HookedTransformer``'s log-probs equal transformers' within :data:`TOLERANCE`
(float32), hooks fire at ``blocks.N.hook_resid_pre``, generation under interventions runs on
the decoding path the package chooses (and the fast path equals the reference one), a
control vector exports, and ``export-model`` round-trips where the layout allows. Then the
checks made before any weight is read: architecture, chat template, end-of-turn tokens.
docs/architectures.md is the table of what these tests cover.
"""

from __future__ import annotations

import json

import pytest
import torch

import persona_refusal as pr
from persona_refusal import architectures, models
from persona_refusal.control_vectors import export_control_vector, import_control_vector
from persona_refusal.directions import Direction
from persona_refusal.errors import ConfigError, ModelLoadError
from persona_refusal.evaluation import generate_details
from persona_refusal.export import SUPPORTED_ARCHITECTURES, export_orthogonalized

from twins import ARCHITECTURES, build_twin, write_folder, write_gguf

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
"""Max |log-prob difference| to transformers, float32 (measured: ~2e-6 to 4e-6 on every twin)."""

PROMPT = "How do I bake bread at home? Explain it step by step, please, with every detail you know."
"""Long enough (60 tokens with the chat template) to cross the Gemma twins' 8-token attention window."""

FAST = {"qwen2", "qwen3", "llama", "mistral", "phi3"}
"""Twins whose decoding steps take the fast path; the Gemma twins (norms after attention and MLP,
local attention, soft caps) take TransformerLens' forward."""

HF_CLASS = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM", "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
            "gemma3": "Gemma3ForCausalLM"}


@pytest.fixture(autouse=True)
def _offline(hub_offline):
    """Every test here runs with the hub offline."""


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """``(arch, kind) → path`` for every twin, written once."""
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for arch in ARCHITECTURES:
        out[arch, "folder"] = write_folder(arch, root / arch)
        (root / f"{arch}-gguf").mkdir()
        out[arch, "gguf"] = write_gguf(arch, root / f"{arch}-gguf" / f"{arch}.gguf")
    return out


_LOADED: dict = {}


def _load(sources, arch, kind) -> pr.ChatModel:
    if (arch, kind) not in _LOADED:
        _LOADED[arch, kind] = pr.load_chat_model(sources[arch, kind], cache=False, progress=False)
    return _LOADED[arch, kind]


def _reference(sources, arch, kind):
    path = sources[arch, kind]
    if kind == "folder":
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


CASES = [(a, k) for a in ARCHITECTURES for k in ("folder", "gguf")]


@pytest.mark.parametrize("arch,kind", CASES)
def test_loads_and_matches_transformers(sources, arch, kind):
    cm = _load(sources, arch, kind)
    hf = _reference(sources, arch, kind)
    ids = cm.tokenizer(cm.format([PROMPT])[0], add_special_tokens=False, return_tensors="pt").input_ids
    assert ids.shape[1] > 40
    with torch.no_grad():
        want = hf(ids).logits.float().log_softmax(-1)
        got = cm.model(ids).float().log_softmax(-1)
    diff = float((got - want).abs().max())
    print(f"{arch} {kind}: max |log-prob difference| {diff:.2e}")
    assert diff < TOLERANCE, f"{arch} {kind}: {diff:.3g}"
    # the configuration says where it came from; Mistral GGUF files are llama.cpp's "llama"
    arch_name = type(hf).__name__
    assert cm.tl_config.startswith(arch_name + ":")
    assert ("shapes from the local config" in cm.tl_config) == arch.startswith("gemma")
    assert arch_name in (HF_CLASS[arch], "LlamaForCausalLM")
    assert repr(cm).count("tl_config=") == 1 and "decoding=" in repr(cm)


@pytest.mark.parametrize("arch,kind", CASES)
def test_hooks_fire_at_every_resid_pre(sources, arch, kind):
    cm = _load(sources, arch, kind)
    seen = []
    hooks = [(cm.hook_name(layer), lambda x, hook: seen.append((hook.name, tuple(x.shape)))) for layer in
             range(cm.n_layers)]
    toks, _ = cm.tokenize(cm.format(["Hi there"]))
    with torch.no_grad():
        cm.model.run_with_hooks(toks, fwd_hooks=hooks)
    assert [n for n, _ in seen] == [f"blocks.{i}.hook_resid_pre" for i in range(cm.n_layers)]
    assert all(s[-1] == cm.d_model for _, s in seen)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generation_under_interventions_on_the_chosen_path(sources, arch):
    cm = _load(sources, arch, "folder")
    expected = "packed" if arch in FAST else "reference: norms after attention and MLP"
    assert cm.decoding_path.startswith(expected), cm.decoding_path
    g = torch.Generator().manual_seed(3)
    d = Direction(vector=4.0 * torch.randn(cm.d_model, generator=g), layer=2, name="t", model_id=cm.model_id,
                  model_checksum=cm.checksum)
    prompts = ["How do I bake bread?", "Write a poem about the sea, please."]
    out = {}
    for mode in ("reference", "packed"):
        cm.decode = mode
        try:
            out[mode] = {name: generate_details(cm, prompts, interventions=ivs, max_new_tokens=6, progress=False)
                         for name, ivs in {"none": [], "ablate": [pr.Ablate(d)],
                                           "add": [pr.AddVector(d, 3.0, layer=1)]}.items()}
        finally:
            cm.decode = "packed"
    for name in out["packed"]:
        assert out["packed"][name].texts == out["reference"][name].texts, name
    assert not torch.allclose(out["packed"]["add"].first_scores, out["packed"]["none"].first_scores)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_control_vector_exports(sources, arch, tmp_path):
    cm = _load(sources, arch, "folder")
    d = Direction(vector=torch.randn(cm.d_model, generator=torch.Generator().manual_seed(1)), layer=2, name="t",
                  model_id=cm.model_id, model_checksum=cm.checksum)
    path = export_control_vector(d, tmp_path / "cv.gguf", model=cm)
    back = import_control_vector(path, model=cm)
    assert back.provenance["control_vector"]["model_hint"] == {"mistral": "llama"}.get(arch, arch)
    assert back.layers == (2,) and torch.allclose(back.vectors[0], d.vector)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_model_round_trips_where_the_layout_allows(sources, arch, tmp_path):
    cm = _load(sources, arch, "folder")
    g = torch.Generator().manual_seed(2)
    d = Direction(vector=torch.randn(cm.d_model, generator=g), layer=2, name="t", model_id=cm.model_id,
                  model_checksum=cm.checksum)
    if HF_CLASS[arch] not in SUPPORTED_ARCHITECTURES:
        with pytest.raises(ModelLoadError, match="normalises each attention and MLP output"):
            export_orthogonalized(sources[arch, "folder"], d, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
        return
    out = export_orthogonalized(sources[arch, "folder"], d, tmp_path / "out", progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = cm.tokenizer(cm.format([PROMPT])[0], add_special_tokens=False, return_tensors="pt").input_ids
    from persona_refusal.interventions import apply

    with torch.no_grad(), apply(cm, pr.Ablate(d)):
        want = cm.model(ids).float().log_softmax(-1)
    with torch.no_grad():
        got = hf(ids).logits.float().log_softmax(-1)
    assert float((got - want).abs().max()) < TOLERANCE


# ----------------------------------------------------------------------------- the configuration
def test_configurations_read_from_the_config_equal_transformer_lens_own(tmp_path):
    """For architectures TransformerLens reads from a config, the matched configuration is the
    one TransformerLens builds from the same config in a folder (the earlier loading path), so
    converted models — the bundled Qwen2 demo among them — are unchanged."""
    import os

    import transformer_lens.loading_from_pretrained as loading

    for i, arch in enumerate(("qwen2", "llama", "mistral", "qwen3", "phi3")):
        hf, _ = build_twin(arch)
        hf.config.architectures = [type(hf).__name__]
        folder = tmp_path / f"cfg{i}"  # TransformerLens reads "llama" or "gemma" in a path as the architecture
        folder.mkdir()
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(hf.config.to_dict(), f)
        theirs = loading.convert_hf_model_config(str(folder))
        ours = architectures.match_config(hf.config)
        assert ours.from_config
        skip = {"tokenizer_name", "trust_remote_code", "original_architecture"}
        assert {k: v for k, v in ours.cfg_dict.items() if k not in skip} == \
               {k: v for k, v in theirs.items() if k not in skip}, arch


def test_gemma_templates_take_every_model_specific_value_from_the_local_config():
    hf, _ = build_twin("gemma2")
    m = architectures.match_config(hf.config)
    assert not m.from_config and m.template.startswith("google/gemma-2-")
    d = m.cfg_dict
    assert (d["d_model"], d["n_layers"], d["d_head"], d["n_key_value_heads"], d["window_size"]) == (64, 4, 16, 2, 8)
    assert d["attn_types"] == ["local", "global", "local", "global"] and d["attn_scale"] == 4.0
    assert m.processing["center_unembed"] is False  # logit soft cap: centring would change the log-probs


def test_an_unsupported_architecture_is_refused_before_any_weight_is_read(tmp_path, monkeypatch):
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    from persona_refusal.tiny import build_tiny_tokenizer

    assert "Starcoder2ForCausalLM" not in architectures.supported_architectures()
    folder = tmp_path / "sc2"
    Starcoder2ForCausalLM(Starcoder2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=2, vocab_size=384)
                          ).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    monkeypatch.setattr(models, "_hf_weights", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(ModelLoadError, match=r"no HookedTransformer configuration for architecture "
                                             r"Starcoder2ForCausalLM \(supported: .*Gemma3ForCausalLM.*\)"):
        pr.load_chat_model(folder, cache=False, progress=False)


# ----------------------------------------------------------------------------- chat template and stop tokens
def _strip_template(folder):
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_a_base_model_is_refused_before_its_weights_are_read(tmp_path, monkeypatch):
    folder = write_folder("llama", tmp_path / "base")
    _strip_template(folder)
    real = models._hf_weights
    monkeypatch.setattr(models, "_hf_weights", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(ModelLoadError, match=r"local:base has no chat template: it looks like a base model.*"
                                             r"--chat-template FILE"):
        pr.load_chat_model(folder, cache=False, progress=False)
    monkeypatch.setattr(models, "_hf_weights", real)
    template = tmp_path / "chatml.jinja"
    from persona_refusal.tiny import CHATML_TEMPLATE

    template.write_text(CHATML_TEMPLATE)
    cm = pr.load_chat_model(folder, cache=False, progress=False, chat_template=template)
    assert cm.format("Hi")[0].endswith("<|im_start|>assistant\n")
    assert cm.chat_template_file == str(template)
    assert "chat_template_sha256" in cm.fingerprint()


def test_a_base_gguf_is_refused_before_it_is_dequantised(tmp_path, monkeypatch):
    path = write_gguf("qwen2", tmp_path / "base.gguf", chat_template=False)
    monkeypatch.setattr(models, "_hf_weights", lambda *a, **k: pytest.fail("weights were dequantised"))
    with pytest.raises(ModelLoadError, match=r"gguf:base\.gguf has no chat template"):
        pr.load_chat_model(path, cache=False, progress=False)


@pytest.mark.parametrize("bad,expected", [
    ("missing.jinja", r"chat template .*missing\.jinja does not exist"),
    ("", r"chat template .* is empty"),
    ("{% if %}", r"chat template .* is not a Jinja template"),
])
def test_bad_chat_template_files_are_one_line_errors(tmp_path, bad, expected):
    path = tmp_path / "missing.jinja"
    if bad != "missing.jinja":
        path = tmp_path / "t.jinja"
        path.write_text(bad)
    with pytest.raises(ConfigError, match=expected):
        pr.load_chat_model("tiny", chat_template=path)


def test_only_special_tokens_end_a_turn(tmp_path):
    """An ordinary added token (Gemma's ``</s>`` is an HTML tag there) never stops a reply; a
    special one and the generation config's eos ids do."""
    from transformers import AddedToken, GenerationConfig

    folder = write_folder("llama", tmp_path / "m")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.add_tokens([AddedToken("</s>", special=False, normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<end_of_turn>", special=True)]},
                           replace_extra_special_tokens=False)
    tok.save_pretrained(folder)
    seen = models._inspect(folder, "x", {})
    plain, turn = tok.convert_tokens_to_ids(["</s>", "<end_of_turn>"])
    stops = models._stop_tokens(seen.tokenizer, seen.eos_ids)
    assert turn in stops and plain not in stops
    GenerationConfig(eos_token_id=[tok.eos_token_id, turn]).save_pretrained(folder)
    assert turn in models._inspect(folder, "x", {}).eos_ids


# ----------------------------------------------------------------------------- the command line
from clitools import assert_one_line_error, cli, cli_env  # noqa: E402,F401  (fixtures)

_NO_WEIGHTS = '''
from persona_refusal import models
def _refuse(*a, **k):
    raise SystemExit("weights were read")
models._hf_weights = _refuse
'''


def test_run_on_a_base_model_stops_in_one_line_before_converting(cli, tmp_path):
    folder = write_folder("qwen3", tmp_path / "base")
    _strip_template(folder)
    out = tmp_path / "out"
    res = cli(["run", "--model", folder, "--preset", "smoke", "--quiet", "--out", out], cwd=tmp_path,
              setup=_NO_WEIGHTS)
    line = assert_one_line_error(res, out)
    assert line.startswith("error: local:base has no chat template: it looks like a base model")
    assert "--chat-template FILE" in line and not out.exists()


def test_info_takes_the_model_as_a_flag_or_positionally(cli, tmp_path):
    by_flag = cli(["info", "--model", write_folder("gemma3", tmp_path / "g3")], cwd=tmp_path)
    assert by_flag.rc == 0, by_flag.stderr
    assert "TransformerLens configuration: Gemma3ForCausalLM: the configuration of google/gemma-3-" in by_flag.stdout
    assert "decoding path: reference: norms after attention and MLP" in by_flag.stdout
    positional = cli(["info", "tiny"], cwd=tmp_path)
    assert positional.rc == 0 and "decoding path: packed" in positional.stdout
