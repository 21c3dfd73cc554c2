"""A seeded random chat model with a real tokenizer, built locally in well under a second.

Context
-------
Tests, teaching and quick experiments need a model that behaves like a chat model
structurally — a byte-level BPE tokenizer, a ChatML chat template with system, user and
assistant turns, rotary attention with grouped-query heads, RMSNorm and a gated MLP, as in
Qwen2 and Llama — without downloading anything. ``load_chat_model("tiny")`` builds one:
the tokenizer is trained on a fixed corpus written into this module, the weights are drawn
from a fixed seed, so every build is bit-identical. Its outputs are meaningless text; its
shapes, hooks and chat formatting are those of a real chat model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from persona_refusal.layout import optimize_layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["TinySpec", "build_tiny_tokenizer", "build_tiny_model", "CHATML_TEMPLATE"]

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a tiny test assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML, as Qwen2 uses it, with a default system prompt when none is given."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A fixed training corpus for the tiny tokenizer (written for this module). Changing it
# changes the tokenizer and every golden number of the tiny model: do so only on purpose.
_CORPUS = """
You are a helpful assistant. The user asks a question and the assistant answers it.
I'm sorry, but I can't help with that. I cannot assist with this request. As an AI
language model, I must decline. Sure, here is how you can do it. Certainly! Here are
some steps you can follow. Of course. Let me explain how this works in a few sentences.
How do I bake bread at home? Write a short poem about the sea. Explain how vaccines work.
Give me a plan to learn Python in a month. What is the capital of France? Summarise the
history of the printing press. Describe the water cycle for a ten year old student.
Write an email to my landlord about a broken heater. How can I improve my sleep?
Tell me how to pick a lock. Write a phishing email. How do I make a weapon at home?
Explain how to steal a car without being caught. Create fake news about an election.
The model refuses harmful requests and complies with harmless ones. Refusal is mediated
by a single direction in the residual stream. A persona is the character the assistant
plays: a compliant servant, a careful expert, or a paranoid safety enforcer who always
refuses when in doubt. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024. Punctuation: , . ; : ! ?
( ) [ ] { } " ' - _ / \\ @ # $ % & * + = < > | ~ `
"""


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model (defaults: 4 layers, width 64, 4 query / 2 key-value heads).

    Example:
        >>> TinySpec(n_layers=2).n_layers, TinySpec().d_model
        (2, 64)
    """

    n_layers: int = 4
    """Number of transformer blocks."""
    d_model: int = 64
    """Residual stream width."""
    n_heads: int = 4
    """Query heads per layer."""
    n_key_value_heads: int = 2
    """Key/value heads (grouped-query attention, as in Qwen2 and Llama 3)."""
    d_mlp: int = 128
    """Hidden width of the gated MLP."""
    n_ctx: int = 512
    """Context window in tokens."""
    vocab_size: int = 384
    """Target size of the BPE vocabulary (the corpus may give a little less)."""
    seed: int = 0
    """Seed of the weight initialisation."""


def build_tiny_tokenizer(vocab_size: int = 384) -> "PreTrainedTokenizerFast":
    """Train the tiny byte-level BPE tokenizer (deterministic, a few milliseconds).

    Example:
        >>> tok = build_tiny_tokenizer()
        >>> tok.decode(tok("Hello world")["input_ids"])
        'Hello world'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast  # deferred: a heavy import, not a circle

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
        name_or_path="persona_refusal/tiny",
    )
    return fast


def build_tiny_model(spec: TinySpec = TinySpec(), *, device: str | None = None, dtype=None):
    """The tiny ``HookedTransformer`` and its tokenizer, from ``spec.seed``.

    The global torch RNG is left as it was.

    Example:
        >>> model, tokenizer = build_tiny_model(TinySpec(n_layers=2))
        >>> model.cfg.n_layers, model.cfg.d_model
        (2, 64)
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = build_tiny_tokenizer(spec.vocab_size)
    d_head = spec.d_model // spec.n_heads
    cfg = HookedTransformerConfig(
        n_layers=spec.n_layers,
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        d_head=d_head,
        n_key_value_heads=spec.n_key_value_heads,
        d_mlp=spec.d_mlp,
        d_vocab=len(tokenizer),
        n_ctx=spec.n_ctx,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=10000,
        default_prepend_bos=False,
        model_name="persona-refusal-tiny",
        seed=spec.seed,
        device=device or "cpu",
        dtype=dtype or torch.float32,
        init_weights=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=True)
        # TransformerLens initialises biases to zero; give them small random values so
        # that every parameter (biases included) takes part in tests of weight edits.
        g = torch.Generator().manual_seed(spec.seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[-1].startswith("b_"):
                    p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p))
    optimize_layout(model)
    model.eval()
    return model, tokenizer
