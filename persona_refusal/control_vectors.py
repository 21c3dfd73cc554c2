"""Directions as llama.cpp control vectors (GGUF files), and control vectors as directions.

Context
-------
llama.cpp steers a model with a *control vector*: ``llama-cli -m model.gguf
--control-vector-scaled FILE.gguf:S`` reads a GGUF file whose tensors are named
``direction.N`` (float32, one dimension, ``n_embd`` long) and, at every token, adds
``S · direction.N`` to the **output of block N** (after the block's FFN residual add, the
tensor llama.cpp names ``l_out``). ``direction.0`` is invalid (llama.cpp rejects the whole
file), so the output of block 0 and the embeddings cannot be steered. The file also holds
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's
architecture, e.g. ``"qwen2"``) and ``controlvector.layer_count``, as repeng writes them;
llama.cpp itself reads none of the metadata, only the tensors.

This package indexes the residual stream by ``resid_pre``: layer ``l`` is
``blocks.{l}.hook_resid_pre``, the *input* of block ``l`` = the output of block ``l-1``.
So **package layer l is llama.cpp's direction.{l-1}**:

=====================================  ===============================  ============================
package (``resid_pre`` index ``l``)    TransformerLens hook             llama.cpp tensor
=====================================  ===============================  ============================
``0`` (the embeddings)                 ``blocks.0.hook_resid_pre``      none: cannot be exported
``1`` (output of block 0)              ``blocks.1.hook_resid_pre``      ``direction.0``: invalid
``l`` for ``2 ≤ l < n_layers``         ``blocks.{l}.hook_resid_pre``    ``direction.{l-1}``
``n_layers`` (the final residual)      ``blocks.{n-1}.hook_resid_post`` ``direction.{n_layers-1}``
=====================================  ===============================  ============================

A :class:`~persona_refusal.directions.Direction` read at ``blocks.{l}.hook_resid_post`` is
the same point as ``resid_pre`` ``l+1``; directions read at ``resid_mid``, ``attn_out`` or
``mlp_out`` have no llama.cpp counterpart and are refused.

What is written is what llama.cpp adds: ``scale · vector`` (the raw diff-in-means vector,
as :class:`~persona_refusal.interventions.AddVector` adds it), or ``scale · unit`` with
``unit=True``. Adding ``direction.{l-1}`` scaled by ``S`` is
``AddVector(direction, S, layer=l)`` at every position; a file with several layers adds all
of them at once. The package's metadata (name, model id and checksum, prompt counts,
provenance, position, hook site, scale) travels as extra ``persona_refusal.*`` key–value
fields, which llama.cpp and repeng ignore and :func:`import_control_vector` restores.
Reference means are not exported (llama.cpp has no use for them). See
``docs/control-vectors.md``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import gguf
import numpy as np
import torch
from torch import Tensor

from persona_refusal.directions import (
    _check_shared,
    Direction,
    DirectionGrid,
    LayerDirections,
    as_integer,
    as_number,
)
from persona_refusal.errors import ConfigError, DirectionMismatchError
from persona_refusal.storage import (MAX_JSON_DEPTH, atomic_write_bytes, check_output, file_kind, json_depth, read_json,
                                     read_user_json)

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = [
    "export_control_vector",
    "import_control_vector",
    "llama_cpp_index",
    "package_layer",
    "parse_layers",
    "read_directions",
    "import_target",
    "ARCHITECTURE",
    "FORMAT",
]

log = logging.getLogger(__name__)

ARCHITECTURE = "controlvector"
"""``general.architecture`` of a control-vector file."""
FORMAT = "persona_refusal.control_vector/1"
"""``persona_refusal.format`` of the files :func:`export_control_vector` writes."""
_P = "persona_refusal."
_HINT = f"{ARCHITECTURE}.model_hint"
_COUNT = f"{ARCHITECTURE}.layer_count"
_TENSOR_RE = re.compile(r"direction\.([0-9]+)")
_CONVENTION = "direction.N is added to the output of block N, i.e. at blocks.{N+1}.hook_resid_pre"
_EXPORTABLE = "llama.cpp adds control vectors to the output of blocks 1.. only: package layers 2.. (resid_pre)"


# ============================================================================ the layer convention
def llama_cpp_index(layer: int) -> int:
    """The llama.cpp ``direction.N`` index of package layer ``layer`` (a ``resid_pre`` index).

    Example:
        >>> llama_cpp_index(16)
        15
        >>> llama_cpp_index(1)
        Traceback (most recent call last):
        ...
        persona_refusal.errors.ConfigError: layer 1 cannot be a llama.cpp control vector: it is the output of block 0, \
which llama.cpp never steers (direction.0 is invalid) (use layers 2 or above)
    """
    layer = as_integer(layer, "layer", minimum=0)
    if layer == 0:
        raise ConfigError("layer 0 cannot be a llama.cpp control vector: it is the embeddings (resid_pre 0), "
                          "which llama.cpp never steers", hint="use layers 2 or above")
    if layer == 1:
        raise ConfigError("layer 1 cannot be a llama.cpp control vector: it is the output of block 0, which "
                          "llama.cpp never steers (direction.0 is invalid)", hint="use layers 2 or above")
    return layer - 1


def package_layer(index: int) -> int:
    """The package layer (``resid_pre`` index) of llama.cpp's ``direction.{index}``.

    Example:
        >>> package_layer(15)
        16
    """
    index = as_integer(index, "direction index", minimum=1)
    return index + 1


def parse_layers(text: str) -> tuple[int, ...]:
    """A layer list from the command line: comma-separated integers and inclusive ranges.

    Example:
        >>> parse_layers("2,5-7")
        (2, 5, 6, 7)
    """
    out: list[int] = []
    hint = "write them as a comma-separated list of integers and ranges, e.g. --layers 8,12-16"
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError(f"--layers is empty ({text!r})", hint=hint)
    for part in parts:
        m = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", part)
        if m is None:
            raise ConfigError(f"--layers {text!r}: {part!r} is not a layer or a range of layers", hint=hint)
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ConfigError(f"--layers {text!r}: the range {part!r} runs backwards", hint=f"write it as {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise ConfigError(f"--layers {text!r} names a layer twice", hint="give each layer once")
    return tuple(out)


# ============================================================================ export
_LLAMA_CPP_NAMES = {"mistral": "llama"}
"""Architectures llama.cpp knows by another name (its converter writes Mistral as ``llama``)."""


def _model_hint(model_hint: Any, directions: Direction | LayerDirections, model: "ChatModel | None") -> str:
    """The ``controlvector.model_hint``: given, else the model's architecture, else the one an imported
    control vector recorded."""
    if model_hint is not None:
        if not isinstance(model_hint, str) or not model_hint.strip() or model_hint != model_hint.strip():
            raise ConfigError(f"model_hint must be a non-empty name without surrounding spaces, got {model_hint!r}",
                              hint="use llama.cpp's architecture name, e.g. qwen2 or llama")
        return model_hint
    if model is not None:
        arch = str(getattr(model.model.cfg, "original_architecture", None) or "")
        name = re.sub(r"(ForCausalLM|LMHeadModel|Model)$", "", arch).lower()
        name = _LLAMA_CPP_NAMES.get(name, name)
        if name in gguf.MODEL_ARCH_NAMES.values():
            return name
    recorded = (directions.provenance.get("control_vector") or {}).get("model_hint")
    if isinstance(recorded, str) and recorded.strip():
        return recorded
    raise ConfigError("a control vector needs a model_hint (the model's architecture) and none is known here",
                      hint="pass model_hint='qwen2' (--model-hint qwen2 on the command line): llama.cpp's name "
                           "for the model's architecture")


def _rows(directions: Direction | LayerDirections, layers: Sequence[int] | None, unit: bool
          ) -> tuple[list[int], list[Tensor], str]:
    """The package layers to write, the vector of each (before scaling), and the source's hook site."""
    if isinstance(directions, Direction):
        site = directions.hook_name.rsplit(".hook_", 1)[1]
        if site not in ("resid_pre", "resid_post"):
            raise ConfigError(f"direction {directions.name!r} was read at {directions.hook_name}, which has no "
                              f"llama.cpp counterpart (llama.cpp adds to the residual stream between blocks)",
                              hint="use a direction read at resid_pre or resid_post")
        own = directions.layer + (1 if site == "resid_post" else 0)
        targets = [own] if layers is None else list(_layer_list(layers))
        for l in targets:
            llama_cpp_index(l)
        v = directions.unit if unit else directions.vector
        return targets, [v for _ in targets], site
    if layers is None:
        targets = [l for l in directions.layers if l >= 2]
        skipped = [l for l in directions.layers if l < 2]
        if not targets:
            raise ConfigError(f"directions {directions.name!r} have only layers {list(directions.layers)}, none of "
                              f"which llama.cpp can steer", hint=_EXPORTABLE)
        if skipped:
            log.warning("directions %r: layers %s not exported (%s)", directions.name, skipped, _EXPORTABLE)
    else:
        targets = list(_layer_list(layers))
        missing = [l for l in targets if l not in directions.layers]
        if missing:
            raise ConfigError(f"directions {directions.name!r} have no direction at layers {missing} (they have "
                              f"{list(directions.layers)})", hint="pick layers the directions have")
        for l in targets:
            llama_cpp_index(l)
    vectors = []
    for l in targets:
        v = directions.vector_at(l)
        vectors.append(v.clone() if not unit or float(v.norm()) == 0.0 else v / v.norm())
    return targets, vectors, "resid_pre"


def _layer_list(layers: Any) -> tuple[int, ...]:
    if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise ConfigError(f"layers must be a list of integers, got {layers!r}", hint="write it as a list, e.g. [8, 12]")
    out = tuple(as_integer(l, "layers entry", minimum=0) for l in layers)
    if not out:
        raise ConfigError("layers is empty", hint="give at least one layer, or leave layers out")
    if len(set(out)) != len(out):
        raise ConfigError(f"layers {list(out)} holds a layer twice", hint="give each layer once")
    return out


def _check_out(path: Path) -> None:
    """Refuse to replace anything but a control vector this package wrote at ``path`` (and,
    by the storage rule, a link, a pipe, a folder or a path with a trailing slash)."""
    if file_kind(path) == "a folder":
        raise ConfigError(f"{path} is a folder", hint="give the path of the .gguf file to write")
    check_output(path, ours=lambda p: True, example="refusal.gguf")
    if file_kind(path) is None:
        return
    try:
        fields = _fields(gguf.GGUFReader(path))
    except Exception:
        fields = {}
    arch = fields.get("general.architecture", (None, None))[1]
    if arch == ARCHITECTURE and _P + "format" in fields:
        return
    what = ("a control vector persona_refusal did not write" if arch == ARCHITECTURE
            else f"a GGUF file of architecture {arch!r}" if arch else "not a control-vector file")
    raise ConfigError(f"{path} exists and is {what}; it is not replaced",
                      hint="choose another output path, or move that file away")


def export_control_vector(
    directions: Direction | LayerDirections,
    path: str | os.PathLike,
    *,
    scale: float = 1.0,
    unit: bool = False,
    layers: Sequence[int] | None = None,
    model_hint: str | None = None,
    model: "ChatModel | None" = None,
    allow_transfer: bool = False,
) -> Path:
    """Write ``directions`` as a llama.cpp control vector (a GGUF file), atomically.

    Args:
        directions: a :class:`Direction` (written at its own layer, or at each of ``layers``:
            the same vector broadcast) or :class:`LayerDirections` (every layer from 2 on, or
            ``layers``; layers 0 and 1 are skipped with a warning: llama.cpp cannot steer
            them).
        path: the ``.gguf`` file. A control vector this function wrote before is replaced;
            any other existing file (a model, a repeng vector, anything else) is refused.
        scale: each tensor is ``scale · vector`` (float32), what llama.cpp adds at
            ``--control-vector FILE`` (``--control-vector-scaled FILE:S`` multiplies by ``S``).
        unit: write ``scale · unit vector`` instead of the raw vector (a zero row stays zero).
        layers: package layers (``resid_pre`` indices, 2 or above) to write.
        model_hint: ``controlvector.model_hint``, llama.cpp's architecture name (``"qwen2"``);
            by default the ``model``'s architecture, or the hint of an imported control vector.
        model: check the directions against this model (width, identity unless
            ``allow_transfer``, layers in range) and take the model hint from it.

    Returns the path written. ``direction.{l-1}`` holds package layer ``l`` (see the module
    docstring).

    Example:
        >>> d = Direction(vector=torch.ones(64), layer=2, name="refusal")
        >>> p = export_control_vector(d, tmp / "refusal.gguf", scale=4.0, model_hint="qwen2")
        >>> [t.name for t in gguf.GGUFReader(p).tensors]
        ['direction.1']
    """
    if isinstance(directions, DirectionGrid):
        raise ConfigError("a DirectionGrid holds candidates, not one direction per layer",
                          hint="export grid.direction(position, layer) or grid.layer_directions(position)")
    if not isinstance(directions, (Direction, LayerDirections)):
        raise ConfigError(f"directions must be a Direction or LayerDirections, got {type(directions).__name__}")
    scale = as_number(scale, "scale")
    if scale == 0.0:
        raise ConfigError("scale is 0, which writes a control vector that does nothing", hint="use a non-zero scale")
    if not isinstance(unit, bool):
        raise ConfigError(f"unit must be True or False, got {unit!r}")
    if model is not None:
        directions.check(model, allow_transfer=allow_transfer)
    hint = _model_hint(model_hint, directions, model)
    targets, vectors, site = _rows(directions, layers, unit)
    if model is not None:
        deep = [l for l in targets if l > model.n_layers]
        if deep:
            raise ConfigError(f"layers {deep} are beyond {model.model_id}'s {model.n_layers} blocks",
                              hint=f"use layers 2..{model.n_layers}")
    out = Path(path)
    _check_out(out)
    rows = {llama_cpp_index(l): (v.to(torch.float32) * scale).contiguous() for l, v in zip(targets, vectors)}
    bad = [i + 1 for i, v in rows.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"scale {scale:g} makes the vector at layers {bad} overflow float32",
                          hint="use a smaller scale")
    lost = [i + 1 for (i, v), src in zip(rows.items(), vectors) if bool((v == 0).all()) and bool((src != 0).any())]
    if lost:
        raise ConfigError(f"scale {scale:g} makes the vector at layers {lost} zero in float32, which writes a control "
                          f"vector that does nothing", hint="use a larger scale")

    with tempfile.TemporaryDirectory(prefix="persona_refusal_cvec_") as tmp:
        staged = Path(tmp) / "control_vector.gguf"
        w = gguf.GGUFWriter(staged, ARCHITECTURE)
        w.add_string(_HINT, hint)
        w.add_uint32(_COUNT, len(rows))
        w.add_string(_P + "format", FORMAT)
        w.add_string(_P + "layer_convention", _CONVENTION)
        w.add_string(_P + "source", type(directions).__name__)
        w.add_string(_P + "name", directions.name)
        w.add_string(_P + "site", site)
        if isinstance(directions, Direction):
            w.add_string(_P + "hook_name", directions.hook_name)
        for key in ("model_id", "model_checksum"):
            if getattr(directions, key) is not None:
                w.add_string(_P + key, getattr(directions, key))
        for key in ("n_positive", "n_negative"):
            if getattr(directions, key) is not None:
                w.add_uint64(_P + key, int(getattr(directions, key)))
        if directions.position is not None:
            w.add_int64(_P + "position", int(directions.position))
        w.add_float64(_P + "scale", scale)
        w.add_bool(_P + "unit", unit)
        w.add_string(_P + "provenance", json.dumps(directions.provenance, sort_keys=True, default=str))
        for index in sorted(rows):
            w.add_tensor(f"direction.{index}", rows[index].numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        atomic_write_bytes(out, staged.read_bytes())
    return out


# ============================================================================ import
def _fields(reader: "gguf.GGUFReader") -> dict[str, tuple[Any, Any]]:
    """Every key–value field as ``(GGUFValueType, Python value)`` (arrays: a list)."""
    out = {}
    for name, f in reader.fields.items():
        if not f.types:
            continue
        kind = f.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            if len(f.types) > 1 and f.types[1] == gguf.GGUFValueType.STRING:
                value: Any = [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
            else:
                value = [f.parts[i][0].item() for i in f.data]
        elif kind == gguf.GGUFValueType.STRING:
            value = bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
        else:
            value = f.parts[f.data[0]][0].item()
        out[name] = (kind, value)
    return out


_INTS = {getattr(gguf.GGUFValueType, n) for n in ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")}
_FLOATS = {gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64}


def _meta(fields: dict, key: str, kinds: set, what: str, where: Path) -> Any:
    """A ``persona_refusal.*`` field of one of ``kinds`` (``None`` when absent)."""
    if _P + key not in fields:
        return None
    kind, value = fields[_P + key]
    if kind not in kinds:
        raise ConfigError(f"control vector {where}: {_P}{key} must be {what}, got a GGUF {kind.name.lower()}",
                          hint="export it again with persona_refusal")
    return value


def import_control_vector(path: str | os.PathLike, *, model: "ChatModel | None" = None,
                          allow_transfer: bool = False) -> LayerDirections:
    """Read a llama.cpp control vector as :class:`LayerDirections` (``resid_pre`` layers).

    ``direction.N`` becomes layer ``N+1``; the vectors are the file's float32 values as they
    are (what llama.cpp adds at strength 1: a file exported with ``scale`` or ``unit`` gives
    those vectors back, not the original ones). A file written by
    :func:`export_control_vector` gives back its name, model id and checksum, prompt counts,
    position and provenance; any other control vector (repeng, llama.cpp's
    ``cvector-generator``) imports with its file name as the name and no model id.
    ``provenance["control_vector"]`` records the file, its model hint, scale and source.

    Args:
        model: check the vectors against it (width; model id unless ``allow_transfer``;
            layers within its blocks).

    Raises:
        DirectionMismatchError: the file is not a readable GGUF control vector, or does not
            fit ``model``.
        ConfigError: a tensor or field of the file is malformed (the message names it).

    Example:
        >>> ld = import_control_vector("refusal.gguf")     # doctest: +SKIP
        >>> ld.layers
        (16,)
    """
    p = Path(path)
    _check_regular_file(p)
    fields, tensors = _read_gguf(p)
    hint, count = _check_header(fields, p)
    rows = _direction_rows(tensors, p)
    shared, provenance, position = _metadata(fields, p, hint, count)
    order = sorted(rows)
    try:
        _check_shared({**shared, "provenance": provenance})  # what Direction.load checks: the saved file reads back
        out = LayerDirections(vectors=torch.stack([rows[i] for i in order]), layers=tuple(package_layer(i) for i in order),
                              position=position, provenance=provenance, **shared)
    except ConfigError as e:
        raise ConfigError(f"control vector {p}: {e}") from None
    if model is not None:
        out.check(model, allow_transfer=allow_transfer)
    return out


def _check_regular_file(p: Path) -> None:
    """A control vector is read from a regular file (or a link to one)."""
    if not p.is_file() or file_kind(p) != "file":
        kind = file_kind(p)
        if kind == "a symbolic link" and p.is_file():
            return  # a link to a regular file is read (reading never writes through it)
        else:
            what = ("does not exist" if not p.exists() and kind is None else "is a folder" if p.is_dir()
                    else f"is {kind if kind != 'a symbolic link' else 'a link to ' + (file_kind(p.resolve()) or 'nothing')}, "
                         f"not a regular file")
            raise DirectionMismatchError(f"control vector {p} {what}", hint="give the path of a .gguf control-vector file")


def _read_gguf(p: Path) -> tuple[dict[str, tuple[Any, Any]], list]:
    """The metadata fields and tensors of a GGUF file (:class:`DirectionMismatchError` when it is not one)."""
    try:
        reader = gguf.GGUFReader(p)
        fields = _fields(reader)
        tensors = list(reader.tensors)
    except Exception as e:  # not GGUF, truncated header, bad magic …
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise DirectionMismatchError(f"{p} is not a readable GGUF file ({type(e).__name__}: {reason})",
                                     hint="give a .gguf control vector, e.g. one written by persona-refusal export-vector") from None
    return fields, tensors


def _check_header(fields: dict, p: Path) -> tuple[tuple[Any, Any], tuple[Any, Any] | None]:
    """A control vector's architecture, model hint and layer count fields: the hint and the count."""
    arch = fields.get("general.architecture")
    if arch is None or arch[0] != gguf.GGUFValueType.STRING:
        raise DirectionMismatchError(f"{p} has no general.architecture field, so it is not a control vector",
                                     hint="a llama.cpp control vector has general.architecture = controlvector")
    if arch[1] != ARCHITECTURE:
        raise DirectionMismatchError(f"{p} is a GGUF file of architecture {arch[1]!r} (a model?), not a control vector",
                                     hint="a llama.cpp control vector has general.architecture = controlvector")
    hint = fields.get(_HINT)
    if hint is None or hint[0] != gguf.GGUFValueType.STRING or not hint[1].strip():
        raise DirectionMismatchError(f"control vector {p} has no {_HINT} field (the model architecture it is for)",
                                     hint="add it when writing the file, e.g. writer.add_string('controlvector.model_hint', 'qwen2')")
    count = fields.get(_COUNT)
    if count is not None and count[0] not in _INTS:
        raise ConfigError(f"control vector {p}: {_COUNT} must be an integer, got a GGUF {count[0].name.lower()}")

    return hint, count


def _direction_rows(tensors: list, p: Path) -> dict[int, Tensor]:
    """The ``direction.N`` tensors of a control vector, checked: ``{N: float32 vector}``."""
    rows: dict[int, Tensor] = {}
    n_embd: int | None = None
    for t in tensors:
        m = _TENSOR_RE.fullmatch(t.name)
        if m is None or (m.group(1) != "0" and m.group(1).startswith("0")):
            raise ConfigError(f"control vector {p} holds a tensor {t.name!r}, not direction.N",
                              hint="a control vector holds only tensors direction.1, direction.2, …")
        index = int(m.group(1))
        if index == 0:
            raise ConfigError(f"control vector {p} holds direction.0, which llama.cpp rejects (block 0 is never steered)",
                              hint="remove it: directions start at direction.1")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ConfigError(f"control vector {p}: {t.name} is {t.tensor_type.name}, not F32",
                              hint="llama.cpp reads float32 directions only")
        shape = [int(s) for s in t.shape]
        if len(shape) != 1:
            raise ConfigError(f"control vector {p}: {t.name} has shape {shape}, not one dimension",
                              hint="each direction is a 1-D vector of n_embd floats")
        if n_embd is None:
            n_embd = shape[0]
        elif shape[0] != n_embd:
            raise ConfigError(f"control vector {p}: {t.name} has {shape[0]} values, the others {n_embd}",
                              hint="every direction has the model's n_embd values")
        data = np.asarray(t.data)
        if data.size != shape[0]:
            raise ConfigError(f"control vector {p} is truncated: {t.name} has {data.size} of its {shape[0]} values",
                              hint="write the file again")
        v = torch.from_numpy(np.array(data.reshape(-1), dtype=np.float32))
        if not bool(torch.isfinite(v).all()):
            raise ConfigError(f"control vector {p}: {t.name} holds NaN or inf", hint="use a file with finite values")
        rows[index] = v
    if not rows:
        raise ConfigError(f"control vector {p} holds no direction tensors", hint="write at least one direction.N")

    return rows


def _metadata(fields: dict, p: Path, hint: tuple[Any, Any], count: tuple[Any, Any] | None
              ) -> tuple[dict[str, Any], dict, int | None]:
    """The fields a control vector written by :func:`export_control_vector` records (name,
    model id, prompt counts, provenance, position), and ``provenance["control_vector"]``."""
    fmt = _meta(fields, "format", {gguf.GGUFValueType.STRING}, "text", p)
    ours = fmt is not None
    if ours and fmt != FORMAT:
        raise ConfigError(f"control vector {p} is in format {fmt!r}, which this version of persona_refusal cannot "
                          f"read (it reads {FORMAT!r})", hint="export it again with this version, or upgrade persona_refusal")
    text = {gguf.GGUFValueType.STRING}
    name = _meta(fields, "name", text, "text", p) or p.stem
    shared: dict[str, Any] = {
        "name": name,
        "model_id": _meta(fields, "model_id", text, "text", p),
        "model_checksum": _meta(fields, "model_checksum", text, "text", p),
        "n_positive": _meta(fields, "n_positive", _INTS, "an integer", p),
        "n_negative": _meta(fields, "n_negative", _INTS, "an integer", p),
    }
    provenance: dict = {}
    raw = _meta(fields, "provenance", text, "text", p)
    if raw is not None:
        if json_depth(raw) > MAX_JSON_DEPTH:
            raise ConfigError(f"control vector {p}: {_P}provenance holds JSON nested deeper than {MAX_JSON_DEPTH} levels",
                              hint="write a flat provenance record")
        try:
            provenance = json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"control vector {p}: {_P}provenance is not valid JSON ({e})") from None
        if not isinstance(provenance, dict):
            raise ConfigError(f"control vector {p}: {_P}provenance must be a JSON object")
    scale = _meta(fields, "scale", _FLOATS, "a number", p)
    unit = _meta(fields, "unit", {gguf.GGUFValueType.BOOL}, "a bool", p)
    position = _meta(fields, "position", _INTS, "an integer", p) if ours else None
    provenance["control_vector"] = {
        "file": str(p), "model_hint": hint[1], "layer_count": None if count is None else count[1],
        "format": fmt, "source": _meta(fields, "source", text, "text", p),
        "site": _meta(fields, "site", text, "text", p), "hook_name": _meta(fields, "hook_name", text, "text", p),
        "scale": scale, "unit": unit,
    }
    return shared, provenance, position


# ============================================================================ files, for the CLI
def read_directions(path: str | os.PathLike) -> Direction | LayerDirections:
    """A saved :class:`Direction` or :class:`LayerDirections`, whichever the file holds.

    ``path`` is ``NAME``, ``NAME.json`` or ``NAME.safetensors`` (as for ``Direction.load``).

    Example:
        >>> read_directions(Direction(vector=torch.ones(4), layer=2).save(tmp / "d"))
        Direction('direction', layer=2, hook=blocks.2.hook_resid_pre, position=-1, norm=2, d_model=4, model=None)
    """
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    j = base.with_name(base.name + ".json")
    if not j.exists() and not base.with_name(base.name + ".safetensors").exists():
        raise DirectionMismatchError(f"direction file {p} does not exist",
                                     hint="check the path: a saved direction is a NAME.json + NAME.safetensors pair")
    fmt = None
    if j.is_file():
        try:
            meta = read_json(j)
            fmt = meta.get("format") if isinstance(meta, dict) else None
        except (OSError, ValueError, RecursionError):
            fmt = None  # Direction.load names the problem
    if fmt == DirectionGrid._FORMAT:
        raise DirectionMismatchError(f"{j} holds a DirectionGrid (candidates per position and layer), not a direction",
                                     hint="save one with grid.direction(position, layer).save(...) or "
                                          "grid.layer_directions(position).save(...)")
    cls = LayerDirections if fmt == LayerDirections._FORMAT else Direction
    return cls.load(p)


def _safely_imported(test) -> bool:
    try:
        return bool(test())
    except (OSError, ValueError, RecursionError):
        return False


def import_target(out: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Where ``persona-refusal import-vector SOURCE --out OUT`` saves: ``OUT/<SOURCE stem>`` when
    ``OUT`` is a folder (or ends with a slash), else ``OUT`` itself (``NAME``, ``NAME.json`` or
    ``NAME.safetensors``: the pair ``NAME.json`` + ``NAME.safetensors``). Existing files there
    are refused unless they are a pair an earlier import wrote (LayerDirections whose
    provenance records a ``control_vector``).

    Example:
        >>> import_target(tmp, "refusal.gguf").name
        'refusal'
    """
    text = str(out)
    if not text.strip():
        raise ConfigError(f"--out is empty ({text!r})", hint="give --out a folder or a file name, e.g. --out directions/")
    o = Path(out)
    if o.is_dir() or text.endswith(("/", os.sep)):
        target = o / Path(source).stem
    else:
        target = o.with_suffix("") if o.suffix in (".json", ".safetensors") else o
    pair = [target.with_name(target.name + s) for s in (".json", ".safetensors")]

    def imported() -> bool:  # the pair an earlier import wrote: its .json says so
        meta = read_user_json(pair[0], what="direction file", fields={"provenance": dict})
        return (isinstance(meta, dict) and meta.get("format") == LayerDirections._FORMAT
                and isinstance(meta.get("provenance"), dict) and "control_vector" in meta["provenance"])

    for f in pair:
        if file_kind(f) == "a folder":
            raise ConfigError(f"{f} is a folder", hint="give --out a folder or a file name that is free")
        check_output(f, ours=lambda _: True, example="directions/")  # links, pipes, a parent that is a file
    held = next((f for f in pair if file_kind(f) == "file"), None)
    if held is not None and not _safely_imported(imported):
        raise ConfigError(f"{held} exists and is not a control vector imported before; it is not replaced",
                          hint="choose another --out, or move that file away")
    return target
