"""Export a model with a direction projected out of its weights, as a Hugging Face folder.

Context
-------
:func:`~persona_refusal.interventions.orthogonalize_weights` edits the *in-memory*
``HookedTransformer``. Its weights are TransformerLens-processed (norms folded into the
matrices that read them, the value biases folded into the attention-output bias, the
unembedding centred), so they cannot be written back as the original model: Qwen2, for
one, has no attention-output bias to hold the folded value biases. This module applies the
same edit to the model's **original-layout** weights instead — the transformers model the
package converts from (:func:`persona_refusal.models.load_chat_model`: the bundled demo's
GGUF file dequantised by transformers, a local ``.gguf`` file, or a local Hugging Face
folder) — and writes a plain Hugging Face folder that ``AutoModelForCausalLM`` loads as
usual, with no hooks and no persona_refusal::

    W' = W − r̂ r̂ᵀ W      for the token embedding (rows), every attention output
                         projection (o_proj) and MLP output projection (down_proj), and
                         their biases where the architecture has them

After it, nothing writes along ``r̂`` into the residual stream, so the exported model's
logits are those of hook ablation (:class:`~persona_refusal.interventions.Ablate` at every
layer), up to float rounding. The residual stream of the supported architectures (Qwen2,
Qwen3, Llama, Mistral, Phi-3: RMSNorm) is the same vector in TransformerLens and in transformers —
TransformerLens centres writing weights only for LayerNorm models — so a direction
extracted with the ``HookedTransformer`` applies to the transformers weights unchanged.

**Tied embeddings.** Qwen2.5-0.5B's checkpoint ties ``lm_head`` to ``embed_tokens``.
Projecting ``r̂`` out of the embedding must not change the unembedding (hook ablation
leaves it alone), so a tied model is *untied*: ``lm_head.weight`` is written as its own
tensor, the original embedding, and ``config.json`` says ``"tie_word_embeddings": false``.
(The bundled demo GGUF stores a separate ``output.weight``: it loads untied already.)

The ``"tiny"`` test model is built as a ``HookedTransformer`` only, and its random
attention-output, MLP and unembedding biases have no place in a Qwen2 folder, so it
cannot be exported; :func:`write_tiny_twin` writes a seeded *Qwen2 twin* of it (the same
shapes, tokenizer and chat template, its own weights) as a Hugging Face folder that loads
like any other local model and exports.

Example:
    >>> import tempfile, pathlib
    >>> from persona_refusal.models import load_chat_model
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> cm = load_chat_model(write_tiny_twin(tmp / "twin"), cache=False, progress=False)
    >>> d = Direction(vector=torch.randn(cm.d_model), layer=1, model_id=cm.model_id, model_checksum=cm.checksum)
    >>> out = export_orthogonalized(tmp / "twin", d, tmp / "exported")
    >>> sorted(p.name for p in out.iterdir())[:3]
    ['chat_template.jinja', 'config.json', 'generation_config.json']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

from persona_refusal import assets, ops
from persona_refusal.directions import Direction, check_model
from persona_refusal.errors import ConfigError, ModelLoadError
from persona_refusal.models import LocalSource, _hf_from_gguf, _quiet_transformer_lens, _stop_tokens, local_source
from persona_refusal.storage import check_output, read_json, sha256_json, write_json, write_tensors
from persona_refusal.tiny import TinySpec, build_tiny_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["export_orthogonalized", "orthogonalize_hf_model", "write_tiny_twin", "EXPORT_MARKER",
           "SUPPORTED_ARCHITECTURES"]

EXPORT_MARKER = "persona_refusal_export.json"
"""The file every export writes last: what was exported, and the files it wrote."""

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                           "Phi3ForCausalLM")
"""Architectures :func:`export_orthogonalized` edits: pre-norm RMSNorm decoders whose residual
writers are ``embed_tokens``, ``self_attn.o_proj`` and ``mlp.down_proj`` (tested on random twins
of each: tests/test_architectures.py; docs/architectures.md)."""

_POST_NORMED = {
    "Gemma2ForCausalLM": "Gemma 2", "Gemma3ForCausalLM": "Gemma 3", "Olmo2ForCausalLM": "OLMo 2",
    "Olmo3ForCausalLM": "OLMo 3",
}
"""Architectures whose blocks normalise the attention and MLP outputs before adding them to the
residual stream: a direction projected out of ``o_proj``/``down_proj`` comes back after the
norm's per-channel scale, so the weights cannot carry the edit."""

_FORMAT = "persona_refusal.export/1"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class _Identity:
    """What a direction is checked against (the fields :func:`check_model` reads)."""

    model_id: str
    checksum: str
    d_model: int


# ====================================================================== the edit
def _project_residual(w: Tensor, r_hat: Tensor, residual_dim: int) -> None:
    """``w ← w − r̂ r̂ᵀ w`` along ``residual_dim`` (the dimension that lives in the residual
    stream), in float64 with :func:`~persona_refusal.ops.project_out_unit` — the formula
    :func:`~persona_refusal.interventions.orthogonalize_weights` and the ablation hooks run —
    then cast back to ``w``'s dtype, in place."""
    w64 = w.detach().to(torch.float64).movedim(residual_dim, -1)
    w.copy_(ops.project_out_unit(w64, r_hat).movedim(-1, residual_dim).to(w.dtype))


def _check_architecture(hf_model: "PreTrainedModel") -> None:
    arch = type(hf_model).__name__
    if arch in _POST_NORMED:
        raise ModelLoadError(
            f"cannot export architecture {arch}: {_POST_NORMED[arch]} normalises each attention and MLP output "
            "before adding it to the residual stream, so a direction projected out of the weights comes back after "
            "the norm", hint="steer it with hooks (Ablate, AddVector) or export a control vector instead")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"cannot export architecture {arch}: only {', '.join(SUPPORTED_ARCHITECTURES)} are supported",
                             hint="use a model of a supported architecture")


def orthogonalize_hf_model(hf_model: "PreTrainedModel", vector: Float[Tensor, "d_model"]) -> bool:
    """Project ``vector``'s unit direction out of every residual-stream writer of a
    transformers model, in place; returns whether tied embeddings were untied.

    Edits ``embed_tokens`` (its rows), every ``self_attn.o_proj`` and ``mlp.down_proj``
    (their output dimension) and their biases where present. A tied ``lm_head`` gets its
    own copy of the unedited embedding first (``config.tie_word_embeddings`` becomes
    ``False``), so the unembedding stays as it was.

    Example:
        >>> import tempfile, pathlib
        >>> from transformers import AutoModelForCausalLM
        >>> hf = AutoModelForCausalLM.from_pretrained(write_tiny_twin(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> r = torch.randn(hf.config.hidden_size)
        >>> orthogonalize_hf_model(hf, r)
        True
        >>> float((hf.get_input_embeddings().weight.double() @ (r.double() / r.norm())).abs().max()) < 1e-6
        True
    """
    _check_architecture(hf_model)
    embed = hf_model.get_input_embeddings()
    if vector.shape[-1] != embed.weight.shape[-1]:
        raise ConfigError(f"the direction has width {vector.shape[-1]} but the model has hidden size "
                          f"{embed.weight.shape[-1]}", hint="use a direction made with this model")
    r_hat = ops.unit(vector.detach().to(torch.float64).cpu())
    untied = False
    with torch.no_grad():
        head = hf_model.get_output_embeddings()
        if head is not None and (head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
                                 or getattr(hf_model.config, "tie_word_embeddings", False)):
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
            hf_model.config.tie_word_embeddings = False
            untied = True
        _project_residual(embed.weight, r_hat, -1)
        for layer in hf_model.model.layers:
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                _project_residual(proj.weight, r_hat, 0)
                if proj.bias is not None:
                    _project_residual(proj.bias, r_hat, 0)
    return untied


# ====================================================================== sources
def _source(name_or_path: str | os.PathLike, progress: bool) -> LocalSource:
    """Identity (as :func:`~persona_refusal.models.load_chat_model` records it) and loader of
    a model's original-layout weights; nothing heavy is loaded."""
    name = str(name_or_path)
    if not name.strip():
        raise ConfigError(f"the model is empty ({name!r})", hint="give a model name or path, e.g. --model demo")
    if name == "tiny":
        raise ModelLoadError(
            "the tiny model cannot be exported: it is built as a HookedTransformer only, and its attention-output, "
            "MLP and unembedding biases have no place in a Hugging Face Qwen2 folder",
            hint="export 'demo', a .gguf file or a Hugging Face folder; persona_refusal.export.write_tiny_twin "
                 "writes a tiny Qwen2 model that exports")
    if name in assets.BUNDLED_MODELS:
        spec = assets.BUNDLED_MODELS[name]
        return LocalSource(spec.model_id, spec.sha256, name,
                           lambda: _hf_from_gguf(assets.bundled_model_path(name, progress=progress)))
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"cannot export {name!r}: not 'demo', 'demo-1.5b' or an existing path (export reads local weights only)",
            hint="download a hub model first (e.g. huggingface-cli download NAME --local-dir DIR) and give that folder")
    return local_source(path, hint="give a .gguf file or a folder with config.json and .safetensors weights")


def _load_direction(direction: Direction | str | os.PathLike) -> Direction:
    if isinstance(direction, Direction):
        return direction
    if not isinstance(direction, (str, os.PathLike)):
        raise ConfigError(f"direction must be a Direction or the path of a saved one, got {type(direction).__name__}")
    p = Path(direction).expanduser()
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    missing = [str(f) for f in (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors"))
               if not f.is_file()]
    if missing:
        raise ConfigError(f"direction file {missing[0]} does not exist",
                          hint="check the path: a saved direction is a NAME.json + NAME.safetensors pair")
    return Direction.load(stem)


@contextlib.contextmanager
def _no_transformers_bars():
    """transformers' loading and saving progress bars off (they would write to stderr,
    where the command line's one-line errors go), restored afterwards."""
    from transformers.utils import logging as hf_logging  # deferred: a heavy import, not a circle

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# ====================================================================== the folder
def _previous_files(out: Path) -> list[str] | None:
    """The files a previous export wrote into ``out`` (``None``: ``out`` holds no export)."""
    try:
        marker = read_json(out / EXPORT_MARKER)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _FORMAT or not isinstance(marker.get("files"), list):
        return None
    return [str(f) for f in marker["files"]]


def _check_out(out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """The output folder, and whether it holds a previous export to replace. A folder with
    anything else in it is refused: an export never overwrites or deletes a file it did not write."""
    if not str(out_dir).strip():
        raise ConfigError(f"the output folder is empty ({str(out_dir)!r})",
                          hint="give a folder path, e.g. --out exports/demo-orthogonalized")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder", hint="give --out a folder path")
    check_output(out, folder=True)  # a link, a pipe, a parent that is a file: before anything loads
    if not out.is_dir() or not any(out.iterdir()):
        return out, False
    previous = _previous_files(out)
    if previous is None:
        raise ConfigError(f"{out} is not empty and holds no previous export",
                          hint="give a new or empty folder: an export never overwrites files it did not write")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in set(previous) | {EXPORT_MARKER})
    if foreign:
        raise ConfigError(f"{out} holds a previous export and files it did not write ({', '.join(foreign[:3])})",
                          hint="move those files away, or give a new or empty folder")
    return out, True


def _write_folder(out: Path, replace: bool, write: Callable[[Path], dict | None]) -> Path:
    """Write into a temporary folder next to ``out`` with ``write(tmp) -> marker``, then move
    it into place: a previous export is swapped out whole, an empty folder is filled file by
    file (the folder itself is kept), and an interrupted export leaves ``out`` as it was.
    The marker (``None``: none) is written as :data:`EXPORT_MARKER` with the files' names."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    old = None
    try:
        marker = write(tmp)
        if marker is not None:
            files = sorted(p.name for p in tmp.iterdir())
            write_json(tmp / EXPORT_MARKER, {"format": _FORMAT, **marker, "files": files})
        if replace:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
            os.replace(tmp, out)
        elif out.is_dir():  # empty: keep the folder, move the files in (the marker last)
            for p in sorted(tmp.iterdir(), key=lambda p: p.name == EXPORT_MARKER):
                os.replace(p, out / p.name)
            os.rmdir(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # only the previous export's own files (checked in _check_out)
    return out


def _save_model(folder: Path, hf_model: "PreTrainedModel", tokenizer, dtype: torch.dtype) -> None:
    """``config.json``, ``generation_config.json``, ``model.safetensors`` and the tokenizer
    files (with the chat template) of ``hf_model``, in ``folder``."""
    config = hf_model.config
    if hasattr(config, "quantization_config"):  # a dequantised GGUF model is a plain one now
        del config.quantization_config
    config.dtype = dtype
    config.architectures = [type(hf_model).__name__]
    config.to_json_file(str(folder / "config.json"))
    state = {k: v.detach().to(dtype) for k, v in hf_model.state_dict().items()}
    write_tensors(folder / "model.safetensors", state, metadata={"format": "pt"})
    del state
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = hf_model.generation_config
    stops = _stop_tokens(tokenizer)
    if stops:
        gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def export_orthogonalized(
    model_name_or_path: str | os.PathLike,
    direction: Direction | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    allow_transfer: bool = False,
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Write ``model_name_or_path`` with ``direction`` projected out of its weights as a
    Hugging Face folder (safetensors, config, generation config, tokenizer, chat template).

    Args:
        model_name_or_path: ``"demo"``, ``"demo-1.5b"``, a local ``.gguf`` file (or a
            folder holding one) or a local Hugging Face folder — as in
            :func:`~persona_refusal.models.load_chat_model`. Hub names are not fetched.
        direction: a :class:`~persona_refusal.directions.Direction` or the path of a saved
            one; it must have been made with this model (model id and weights checksum),
            unless ``allow_transfer``.
        out_dir: a new or empty folder, or the folder of a previous export (replaced whole).
        allow_transfer: use a direction made with another model of the same width on purpose.
        dtype: ``"float32"`` (default; the logits of hook ablation to float rounding),
            ``"bfloat16"`` or ``"float16"``.
        progress: progress bars while the bundled model is assembled.

    Returns:
        The folder. ``AutoModelForCausalLM.from_pretrained(folder)`` loads it offline.

    Raises:
        ConfigError: a bad output folder, a missing direction file, or a bad dtype.
        DirectionMismatchError: the direction was made with another model.
        ModelLoadError: a model that cannot be read or exported.

    Example:
        >>> export_orthogonalized("demo", "runs/demo/refusal", "exports/demo-no-refusal")  # doctest: +SKIP
        PosixPath('exports/demo-no-refusal')
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(_DTYPES)}")
    out, replace = _check_out(out_dir)
    d = _load_direction(direction)
    source = _source(model_name_or_path, progress)
    # the identity first (a direction of another model fails before the weights load), the width once they have
    check_model(d, _Identity(source.model_id, source.checksum, d.d_model), allow_transfer, f"direction {d.name!r}")
    with _quiet_transformer_lens(), _no_transformers_bars():
        hf_model, tokenizer = source.build()
    hf_model.requires_grad_(False)
    _check_architecture(hf_model)
    check_model(d, _Identity(source.model_id, source.checksum, int(hf_model.config.hidden_size)), allow_transfer,
                f"direction {d.name!r}")
    untied = orthogonalize_hf_model(hf_model, d.vector)

    def write(tmp: Path) -> dict[str, Any]:
        with _no_transformers_bars():
            _save_model(tmp, hf_model, tokenizer, _DTYPES[dtype])
        return {
            "source": {"model_id": source.model_id, "checksum": source.checksum, "kind": source.source},
            "direction": {"name": d.name, "layer": d.layer, "model_id": d.model_id, "model_checksum": d.model_checksum,
                          "unit_sha256": sha256_json([float(x) for x in ops.unit(d.vector.double()).tolist()])},
            "edit": "W' = W - r r^T W on embed_tokens, every self_attn.o_proj and mlp.down_proj (and their biases)",
            "untied_embeddings": untied,
            "dtype": dtype,
        }

    return _write_folder(out, replace, write)


# ====================================================================== the tiny twin
def write_tiny_twin(folder: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Write a seeded Qwen2 twin of the tiny model as a Hugging Face folder, and return it.

    The tiny model itself (:func:`~persona_refusal.tiny.build_tiny_model`) is a
    ``HookedTransformer`` with random biases Qwen2 has no weights for, so it cannot be
    exported. The twin has its shapes (``spec``), its tokenizer and chat template, and its
    own weights drawn from ``spec.seed``: random q/k/v biases and norm weights (so weight
    processing has something to fold) and **tied** embeddings, as in Qwen2.5-0.5B.
    ``load_chat_model(folder)`` converts it as any local folder; the export then has a real
    original layout to edit. The global torch RNG is left as it was; the folder is written
    atomically (an existing non-empty folder is refused).

    Example:
        >>> import tempfile, pathlib
        >>> folder = write_tiny_twin(pathlib.Path(tempfile.mkdtemp()) / "twin")
        >>> sorted(p.name for p in folder.glob("*.json"))[:2]
        ['config.json', 'generation_config.json']
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM  # deferred: a heavy import, not a circle

    out = Path(folder).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder", hint="give a new or empty folder")
    tokenizer = build_tiny_tokenizer(spec.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_key_value_heads,
        max_position_embeddings=spec.n_ctx, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
        model.eval()
    g = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))

    def write(tmp: Path) -> None:
        with _no_transformers_bars():
            model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _write_folder(out, False, write)  # a model folder, not an export: no marker
