"""Which TransformerLens configuration a local model gets: matched by architecture and shapes.

Context
-------
TransformerLens builds a ``HookedTransformerConfig`` from a Hugging Face config in
``convert_hf_model_config``. For most architectures it reads every value from the config
(Qwen2, Qwen3, Llama, Mistral, Phi-3 …), but for some it only knows *official hub names*
and fills in hard-coded values per name (Gemma 1/2/3, OLMo 1/2): a local Gemma 3 file,
whatever its name, cannot be converted by handing its config to TransformerLens.

:func:`match_config` does it for any local model, from its config alone (no weights read):

1. the architecture (``config.architectures[0]``, e.g. ``Gemma3ForCausalLM``) must be one
   that some model on TransformerLens' official list has (the architecture of each official
   name comes from TransformerLens' model registry, or the name itself for the families it
   keys by name) — never the local file's name;
2. among those official names, the configuration TransformerLens builds *reading the local
   config* is taken when there is one (TransformerLens then reads every value itself);
   otherwise the official name whose hard-coded configuration is closest in shapes is the
   *template*, and every value that differs between models of the family (widths, heads,
   layers, vocabulary, norms' epsilon, rotary bases and scaling, attention windows and their
   per-layer pattern, soft caps, attention scale) is read from the local config;
3. the weight processing follows what TransformerLens' ``from_pretrained`` does for the
   architecture (no norm folding for post-norm blocks, no unembedding centring under a logit
   soft cap).

The loader then converts the weights and checks the converted model's log-probs against
transformers' (:func:`persona_refusal.models.load_chat_model`), so a wrong match is an error,
never a silently different model. docs/architectures.md lists what is tested per
architecture.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_refusal.errors import ModelLoadError

__all__ = ["ConfigMatch", "match_config", "supported_architectures", "processing_for", "PROCESSING"]

PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}
"""The weight processing of every converted model (TransformerLens' ``from_pretrained`` defaults),
before :func:`processing_for` turns off what an architecture cannot take."""

_NOT_CAUSAL_LM = frozenset({"BertForMaskedLM", "T5ForConditionalGeneration", "HubertModel", "HubertForCTC",
                            "Wav2Vec2Model", "Wav2Vec2ForPreTraining", "Gemma3ForConditionalGeneration"})
"""Architectures on TransformerLens' list that are not a text-only causal LM (a GGUF or folder of
a multimodal Gemma 3 is read by transformers as ``Gemma3ForCausalLM``)."""

_BY_NAME = (
    # (prefix of an official name, architecture) for the families TransformerLens keys by name
    ("google/gemma-3-270m", "Gemma3ForCausalLM"),
    ("google/gemma-3-1b", "Gemma3ForCausalLM"),
    ("google/medgemma-27b-text", "Gemma3ForCausalLM"),
    ("google/gemma-2-", "Gemma2ForCausalLM"),
    ("google/gemma-2b", "GemmaForCausalLM"),
    ("google/gemma-7b", "GemmaForCausalLM"),
    ("allenai/OLMo-2-", "Olmo2ForCausalLM"),
    ("allenai/OLMo-1B-hf", "OlmoForCausalLM"),
    ("allenai/OLMo-7B-hf", "OlmoForCausalLM"),
)

_TEMPLATE_FAMILIES = frozenset({"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"})
"""Architectures whose official configurations are hard-coded per name and for which
:func:`_local_values` reads every model-specific value from the local config (tested on
random-weight models: tests/test_architectures.py). Others keyed by name (OLMo 1/2) are refused."""


@dataclass(frozen=True)
class ConfigMatch:
    """The TransformerLens configuration of a local model, and where it came from."""

    architecture: str
    """The Hugging Face architecture, e.g. ``Gemma3ForCausalLM``."""
    template: str
    """The official TransformerLens name whose configuration was used."""
    from_config: bool
    """``True``: TransformerLens read every value from the local config; ``False``: the
    template's hard-coded configuration with the model-specific values read from the local config."""
    cfg_dict: dict
    """The ``HookedTransformerConfig`` fields (before the loader's dtype, device and norm folding)."""
    processing: dict
    """The weight processing (:data:`PROCESSING` less what the architecture cannot take)."""

    def describe(self) -> str:
        """One line, e.g. ``"Gemma3ForCausalLM: the configuration of google/gemma-3-270m, shapes from the
        local config"`` or ``"Qwen2ForCausalLM: TransformerLens' Qwen2ForCausalLM configuration, read from the
        local config"``."""
        if self.from_config:
            return f"{self.architecture}: TransformerLens' {self.architecture} configuration, read from the local config"
        return f"{self.architecture}: the configuration of {self.template}, shapes from the local config"


@functools.lru_cache(maxsize=1)
def _official_architectures() -> dict[str, str]:
    """Official TransformerLens name → Hugging Face architecture, for every name whose
    architecture is known without the network (TransformerLens' model registry, and the
    name-keyed families)."""
    import transformer_lens
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    registry: dict[str, str] = {}
    path = Path(transformer_lens.__file__).parent / "tools" / "model_registry" / "data" / "supported_models.json"
    try:
        for entry in json.loads(path.read_text()).get("models", []):
            registry[entry["model_id"]] = entry["architecture_id"]
    except (OSError, ValueError, KeyError, TypeError):
        registry = {}
    out = {}
    for name in OFFICIAL_MODEL_NAMES:
        arch = next((a for prefix, a in _BY_NAME if name.startswith(prefix)), None) or registry.get(name)
        if arch and arch not in _NOT_CAUSAL_LM:
            out[name] = arch
    return out


def supported_architectures() -> list[str]:
    """Causal-LM architectures a local model may have (those of TransformerLens' official
    models that are read from the config, and the name-keyed families of :data:`_TEMPLATE_FAMILIES`)."""
    known = set(_official_architectures().values())
    keyed = {a for _, a in _BY_NAME}
    return sorted((known - keyed) | (known & _TEMPLATE_FAMILIES))


class _FixedAutoConfig:
    """Stands in for ``transformers.AutoConfig`` inside TransformerLens while it builds a
    configuration: every name resolves to the local config (nothing is fetched)."""

    def __init__(self, hf_config) -> None:
        self.hf_config = hf_config

    def from_pretrained(self, *args, **kwargs):
        return self.hf_config


def _tl_dict(name: str, hf_config) -> dict:
    """TransformerLens' ``convert_hf_model_config(name)`` with ``hf_config`` as the hub's answer."""
    import transformer_lens.loading_from_pretrained as loading

    saved = loading.AutoConfig
    loading.AutoConfig = _FixedAutoConfig(hf_config)
    try:
        return loading.convert_hf_model_config(name)
    finally:
        loading.AutoConfig = saved


def _reads_config(name: str, hf_config, d: dict) -> bool:
    """Whether TransformerLens builds ``name``'s configuration from the config it is given
    (a config with one more layer gives one more layer)."""
    other = copy.deepcopy(hf_config)
    try:
        other.num_hidden_layers = int(hf_config.num_hidden_layers) + 1
        if isinstance(getattr(other, "layer_types", None), list):
            other.layer_types = list(other.layer_types) + [other.layer_types[-1]]
        return _tl_dict(name, other).get("n_layers") == d.get("n_layers") + 1
    except Exception:
        return False


def _shapes(hf_config) -> dict:
    heads = int(hf_config.num_attention_heads)
    d_head = getattr(hf_config, "head_dim", None) or int(hf_config.hidden_size) // heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    return {"d_model": int(hf_config.hidden_size), "n_heads": heads, "d_head": int(d_head),
            "n_layers": int(hf_config.num_hidden_layers), "d_mlp": int(hf_config.intermediate_size),
            "d_vocab": int(hf_config.vocab_size), "n_key_value_heads": int(kv)}


def _closeness(template: dict, shapes: dict) -> tuple:
    same = sum(template.get(k) == v or (k == "n_key_value_heads" and template.get(k) is None
                                        and v == shapes["n_heads"]) for k, v in shapes.items())
    return (same, -abs(math.log(max(int(template.get("d_model", 1)), 1) / shapes["d_model"])))


def _rope(hf_config, layer_type: str) -> dict:
    """``{"rope_theta": …, "rope_type": …, "factor": …}`` for a layer type (transformers 5
    keeps per-layer-type parameters in ``rope_parameters``; older configs a flat ``rope_theta``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    out = dict(params) if isinstance(params, dict) else {}
    if "rope_theta" not in out:
        theta = getattr(hf_config, "rope_theta", None)
        if layer_type == "sliding_attention":
            theta = getattr(hf_config, "rope_local_base_freq", None) or theta
        if theta is not None:
            out["rope_theta"] = theta
    scaling = getattr(hf_config, "rope_scaling", None)
    if layer_type == "full_attention" and isinstance(scaling, dict) and "rope_type" not in out:
        out.update(scaling)
    out.setdefault("rope_type", out.pop("type", None) or "default")
    return out


def _local_values(arch: str, hf_config, template: dict) -> dict:
    """The model-specific values of a name-keyed family, read from the local config."""
    s = _shapes(hf_config)
    v: dict[str, Any] = {k: s[k] for k in ("d_model", "n_heads", "d_head", "n_layers", "d_mlp", "d_vocab")}
    v["n_key_value_heads"] = s["n_key_value_heads"]
    v["n_ctx"] = int(getattr(hf_config, "max_position_embeddings", None) or template.get("n_ctx") or 2048)
    eps = getattr(hf_config, "rms_norm_eps", None) or getattr(hf_config, "layer_norm_eps", None)
    if eps is not None:
        v["eps"] = float(eps)
    act = getattr(hf_config, "hidden_activation", None) or getattr(hf_config, "hidden_act", None)
    if act:
        v["act_fn"] = act
    if template.get("rotary_dim") is not None:
        v["rotary_dim"] = s["d_head"]
    full = _rope(hf_config, "full_attention")
    for rope in (full, _rope(hf_config, "sliding_attention")):
        if rope["rope_type"] not in ("default", "linear"):
            raise ModelLoadError(f"{arch} with rotary scaling {rope['rope_type']!r} has no TransformerLens "
                                 "configuration", hint="use a model with default or linear rotary scaling")
    if "rope_theta" in full:
        v["rotary_base"] = full["rope_theta"]
    if arch == "Gemma3ForCausalLM":
        local = _rope(hf_config, "sliding_attention")
        v["rotary_base_local"] = local.get("rope_theta", template.get("rotary_base_local"))
        v["rotary_scaling_factor"] = float(full.get("factor", 1.0)) if full["rope_type"] == "linear" else 1.0
    elif full["rope_type"] == "linear":
        raise ModelLoadError(f"{arch} with linear rotary scaling has no TransformerLens configuration",
                             hint="use a model without rope scaling")
    qpas = getattr(hf_config, "query_pre_attn_scalar", None)
    if qpas:
        v["use_attn_scale"] = True
        v["attn_scale"] = math.sqrt(float(qpas))
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        window = getattr(hf_config, "sliding_window", None)
        types = getattr(hf_config, "layer_types", None)
        if types is None:
            raise ModelLoadError(f"the {arch} config has no layer_types (which layers attend locally)",
                                 hint="use a config written by transformers 4.53 or later")
        v["attn_types"] = ["local" if t == "sliding_attention" else "global" for t in types]
        v["use_local_attn"] = "local" in v["attn_types"] and bool(window)
        v["window_size"] = int(window) if window else None
        if not v["use_local_attn"]:
            v["attn_types"] = None
        from transformer_lens.config.hooked_transformer_config import SOFTCAP_DISABLED

        attn_cap = getattr(hf_config, "attn_logit_softcapping", None)
        final_cap = getattr(hf_config, "final_logit_softcapping", None)
        v["attn_scores_soft_cap"] = float(attn_cap) if attn_cap else SOFTCAP_DISABLED
        v["output_logits_soft_cap"] = float(final_cap) if final_cap else SOFTCAP_DISABLED
    return v


def _causal_lm_of(model_type: str | None) -> str | None:
    """transformers' causal-LM class for a ``model_type`` (a GGUF file's config names no architecture)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if model_type else None


def match_config(hf_config) -> ConfigMatch:
    """The TransformerLens configuration of a local model from its Hugging Face config
    (a ``PretrainedConfig``), matched by architecture and shapes; one-line
    :class:`ModelLoadError` for an architecture TransformerLens does not support.

    Example:
        >>> from transformers import Qwen2Config
        >>> c = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        ...                 num_key_value_heads=2, vocab_size=300, architectures=["Qwen2ForCausalLM"])
        >>> m = match_config(c)
        >>> m.from_config, m.cfg_dict["d_model"], m.cfg_dict["n_layers"]
        (True, 64, 2)
    """
    archs = list(getattr(hf_config, "architectures", None) or [])
    arch = archs[0] if archs else _causal_lm_of(getattr(hf_config, "model_type", None))
    if arch is None:
        raise ModelLoadError("the model's config names no architecture (config.architectures is empty)",
                             hint="add e.g. \"architectures\": [\"LlamaForCausalLM\"] to config.json")
    if not archs:  # TransformerLens reads the architecture from the config it is given
        hf_config = copy.deepcopy(hf_config)
        hf_config.architectures = [arch]
    names = sorted(n for n, a in _official_architectures().items() if a == arch)
    supported = supported_architectures()
    if not names or arch not in supported:
        raise ModelLoadError(f"TransformerLens has no HookedTransformer configuration for architecture {arch}",
                             hint=f"supported: {', '.join(supported)}")
    shapes = _shapes(hf_config)
    best: tuple | None = None
    for name in names:
        try:
            d = _tl_dict(name, hf_config)
        except Exception:  # a branch that cannot read this config: not a template for it
            continue
        if _reads_config(name, hf_config, d):
            best = (d, name, True)
            break
        if arch in _TEMPLATE_FAMILIES and (best is None or _closeness(d, shapes) > _closeness(best[0], shapes)):
            best = (d, name, False)
    if best is None:
        raise ModelLoadError(f"TransformerLens could not build a configuration for this {arch} model",
                             hint=f"supported: {', '.join(supported)}")
    d, name, from_config = best
    d = dict(d)
    if not from_config:
        d.update(_local_values(arch, hf_config, d))
    d["original_architecture"] = arch
    d["tokenizer_name"] = None
    d.pop("trust_remote_code", None)
    return ConfigMatch(arch, name, from_config, d, processing_for(d))


def processing_for(cfg: Any) -> dict:
    """:data:`PROCESSING` for a configuration (a dict or ``HookedTransformerConfig``), less what
    TransformerLens' ``from_pretrained`` turns off for it: norm folding and writing-weight
    centring for post-norm blocks, unembedding centring under a logit soft cap."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    get = cfg.get if isinstance(cfg, dict) else (lambda k, default=None: getattr(cfg, k, default))
    flags = dict(PROCESSING)
    if get("original_architecture") in POST_NORM_ARCHITECTURES:
        flags["fold_ln"] = flags["center_writing_weights"] = False
    cap = get("output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        flags["center_unembed"] = False
    return flags
