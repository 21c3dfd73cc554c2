"""Seeded random-weight *twins* of real chat-model architectures, for the loading tests.

Each twin is built from transformers' own config class (tiny sizes, no download), gets the
tiny model's byte-level BPE tokenizer and ChatML template, random weights, biases and norm
weights from a fixed seed, and is written as a local Hugging Face folder and, where the
``gguf`` package can write the architecture, as a GGUF file (float32 tensors named and laid
out as llama.cpp's converter writes them: ``gguf.get_tensor_name_map`` names, Llama/Mistral
query and key rows permuted, Gemma norm weights stored as ``1 + w``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from persona_refusal.tiny import build_tiny_tokenizer

SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
"""Per-layer attention of the Gemma twins: a window of 8 tokens on layers 0 and 2 (tests use longer prompts)."""


def _base(tokenizer) -> dict:
    return dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256, bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def configs(tokenizer) -> dict:
    """Architecture name → a function returning its tiny transformers config."""
    import transformers as T

    s = _base(tokenizer)
    return {
        "qwen2": lambda: T.Qwen2Config(tie_word_embeddings=True, **s),
        "qwen3": lambda: T.Qwen3Config(head_dim=128, **s),  # transformers reads no head_dim from a Qwen3 GGUF: 128
        "llama": lambda: T.LlamaConfig(**s),
        "mistral": lambda: T.MistralConfig(sliding_window=None, **s),
        "phi3": lambda: T.Phi3Config(**s),
        "gemma2": lambda: T.Gemma2Config(head_dim=16, sliding_window=8, layer_types=SLIDING, query_pre_attn_scalar=16,
                                         **s),
        "gemma3": lambda: T.Gemma3TextConfig(head_dim=16, sliding_window=8, layer_types=SLIDING,
                                             query_pre_attn_scalar=16, **s),
    }


ARCHITECTURES = ("qwen2", "qwen3", "llama", "mistral", "phi3", "gemma2", "gemma3")

GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "mistral": "llama", "phi3": "phi3",
             "gemma2": "gemma2", "gemma3": "gemma3"}
"""llama.cpp's architecture for each twin (llama.cpp writes Mistral as ``llama``)."""


def build_twin(arch: str, seed: int = 0):
    """``(hf_model, tokenizer)``: the seeded random twin of ``arch``."""
    import transformers as T

    tokenizer = build_tiny_tokenizer()
    config = configs(tokenizer)[arch]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.1)
                else:
                    p.normal_(0.0, 0.1)
    return model, tokenizer


def write_folder(arch: str, folder: Path, seed: int = 0) -> Path:
    """Write the twin of ``arch`` as a Hugging Face folder (safetensors, config, tokenizer)."""
    model, tokenizer = build_twin(arch, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of query/key rows (transformers reverses it on read)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(arch: str, path: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """Write the twin of ``arch`` as a float32 GGUF file with its tokenizer and (unless
    ``chat_template=False``, as a base model's) chat template."""
    import gguf

    model, tokenizer = build_twin(arch, seed)
    c = model.config
    name = GGUF_ARCH[arch]
    w = gguf.GGUFWriter(str(path), name)
    w.add_name(f"twin-{arch}")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = getattr(c, "rope_parameters", None) or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta", 10000.0)
    w.add_rope_freq_base(float(theta))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if name == "llama":
        w.add_rope_dimension_count(head_dim)
    if getattr(c, "sliding_window", None):
        w.add_sliding_window(c.sliding_window)
    w.add_vocab_size(c.vocab_size)
    # the tokenizer, as llama.cpp writes a byte-level BPE one
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == name),
                                     c.num_hidden_layers)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and getattr(c, "tie_word_embeddings", False):
            continue
        gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ValueError(f"no GGUF name for {key} ({arch})")
        data = t.detach().float().numpy().copy()
        if name == "llama" and key.endswith("q_proj.weight"):
            data = _permute(data, c.num_attention_heads)
        elif name == "llama" and key.endswith("k_proj.weight"):
            data = _permute(data, c.num_key_value_heads)
        elif name in ("gemma2", "gemma3") and key.endswith("norm.weight"):
            data = data + 1.0
        w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
