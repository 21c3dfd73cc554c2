"""Directions in the residual stream: the data types, and how they are stored.

Context
-------
Arditi et al. (2024) find that refusal is mediated by one direction: the difference
between the mean activation on harmful and on harmless instructions, read at a layer and
at a position of the chat template after the instruction. Every (position, layer) gives a
*candidate*; :func:`persona_refusal.extraction.extract_directions` computes the whole grid
``[n_positions, n_layers, d_model]`` in one batched pass per prompt set, and
:func:`persona_refusal.selection.select_refusal_direction` picks one as the paper does:

* score each candidate by the first-token refusal score (log-odds of the refusal tokens)
  on held-out **harmful** prompts with the candidate **ablated** at every layer
  ("bypass": lower is better);
* discard candidates whose **addition** at their own layer does not induce refusal on
  held-out **harmless** prompts (mean score below 0), whose ablation moves the harmless
  next-token distribution by KL > 0.1, or whose layer lies in the last 20% of the model;
* the lowest bypass score among the rest wins.

A :class:`Direction` carries the vector with everything needed to use it correctly
later: its hook point, layer and position, the reference (negative-class) mean for
affine edits, the model it came from (id and weights checksum), sample counts and
provenance. It is saved as ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from persona_refusal.checks import checked
from persona_refusal import ops
from persona_refusal.errors import ConfigError, DirectionMismatchError
from persona_refusal.storage import read_json_checked, read_tensors, sha256_bytes, write_json, write_tensors

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = [
    "DirectionMeta",
    "Direction",
    "LayerDirections",
    "DirectionGrid",
]

log = logging.getLogger(__name__)
_FORMAT = "persona_refusal.direction/1"
_Saved = TypeVar("_Saved", bound="DirectionMeta")


HOOK_SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""The residual-stream hook sites a direction can be read at and edits can act on."""
_HOOK_RE = re.compile(r"blocks\.(0|[1-9][0-9]*)\.hook_([a-z_]+)")


def _hook_for(layer: int, site: str = "resid_pre") -> str:
    return f"blocks.{layer}.hook_{site}"


def _shown(value: Any) -> str:
    """``value`` for a message (a tensor by its shape)."""
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)


def as_integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``: ints, numpy integers and 0-d integer tensors are accepted;
    floats (also ``2.0``), bools, text and the rest raise a one-line :class:`ConfigError`.

    Example:
        >>> as_integer(3, "layer")
        3
        >>> as_integer(2.7, "layer")
        Traceback (most recent call last):
        ...
        persona_refusal.errors.ConfigError: layer must be an integer, got 2.7 (use a whole number)
    """
    v = value
    if isinstance(v, Tensor) and v.ndim == 0 and not (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        kind = "a non-negative integer" if minimum == 0 else "an integer"
        raise ConfigError(f"{what} must be {kind}, got {_shown(value)}", hint="use a whole number")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ConfigError(f"{what} must be {'a non-negative integer' if minimum == 0 else f'at least {minimum}'}, got {v}")
    return v


def as_number(value: Any, what: str) -> float:
    """``value`` as a finite ``float``: ints, floats, numpy scalars and 0-d tensors are
    accepted (converted with ``float()``); NaN, ±inf, bools, text and the rest raise a
    one-line :class:`ConfigError`.

    Example:
        >>> as_number(torch.tensor(2.0), "coeff")
        2.0
    """
    v = value
    if isinstance(v, Tensor) or type(v).__module__ == "numpy":
        shape = tuple(getattr(v, "shape", ()))
        if shape != () or getattr(v, "dtype", None) in (torch.bool, bool) or str(getattr(v, "dtype", "")) == "bool":
            raise ConfigError(f"{what} must be a finite number, got {_shown(value)}", hint="use one number, e.g. 2.0")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ConfigError(f"{what} must be a finite number, got {_shown(value)}", hint="use one number, e.g. 2.0")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"{what} must be a finite number, got {v}", hint="use a finite number")
    return v


def _integers(value: Any, what: str, *, minimum: int | None = None) -> tuple[int, ...]:
    """A sequence of integers as a tuple (each as :func:`as_integer`), distinct."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{what} must be a list of integers, got {_shown(value)}", hint="write it as a list, e.g. [0, 1, 2]")
    out = tuple(as_integer(v, f"{what} entry", minimum=minimum) for v in value)
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} {list(out)} holds a value twice", hint="give each one once")
    return out


def _listed(value: Any) -> Any:
    """A JSON list as a tuple; anything else as it is (the constructor says what is wrong with it)."""
    return tuple(value) if isinstance(value, list) else value


def _float_tensor(value: Any, what: str, ndim: int) -> Tensor:
    """``value`` as a tensor of ``ndim`` dimensions and a floating-point dtype (not converted)."""
    try:
        t = torch.as_tensor(value)
    except Exception:
        raise ConfigError(f"{what} must be a {ndim}-D float tensor, got {_shown(value)}") from None
    if not torch.is_floating_point(t):
        raise ConfigError(f"{what} must be floating point, got dtype {str(t.dtype).replace('torch.', '')}",
                          hint="convert it, e.g. with .float()")
    if t.ndim != ndim:
        raise ConfigError(f"{what} must be a {ndim}-D float tensor, got shape {tuple(t.shape)}")
    return t


def _check_hook_name(hook_name: Any, layer: int) -> str:
    """A hook name ``blocks.{layer}.hook_{site}`` with a supported site and this layer."""
    sites = ", ".join(HOOK_SITES)
    m = _HOOK_RE.fullmatch(hook_name) if isinstance(hook_name, str) else None
    if m is None or m.group(2) not in HOOK_SITES:
        raise ConfigError(f"hook_name {hook_name!r} is not a residual-stream hook this package supports",
                          hint=f"use blocks.{layer}.hook_SITE with SITE one of {sites}, or leave hook_name out")
    if int(m.group(1)) != layer:
        raise ConfigError(f"hook_name {hook_name!r} is at layer {int(m.group(1))}, but the direction's layer is {layer}",
                          hint="give a hook name of the same layer, or leave hook_name out")
    return hook_name


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _tensor_digest(tensors: dict[str, Tensor]) -> str:
    parts = b"".join(
        k.encode() + tensors[k].detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
        for k in sorted(tensors)
    )
    return sha256_bytes(parts)


def check_model(obj: Any, chat_model: "ChatModel", allow_transfer: bool, what: str) -> None:
    """Raise :class:`DirectionMismatchError` unless ``obj`` (a direction type) fits ``chat_model``.

    Width must match; so must the model id and weights checksum, unless ``allow_transfer``
    or the model id is unknown. ``what`` names ``obj`` in the message.
    """
    if obj.d_model != chat_model.d_model:
        raise DirectionMismatchError(
            f"{what} has width {obj.d_model} but {chat_model.model_id} has d_model {chat_model.d_model}",
            hint="use a direction made with this model; allow_transfer / --allow-transfer only bridges models of the same width",
        )
    if allow_transfer or obj.model_id is None:
        return
    if obj.model_id != chat_model.model_id or (
        obj.model_checksum is not None and obj.model_checksum != chat_model.checksum
    ):
        raise DirectionMismatchError(
            f"{what} was made with {obj.model_id} (checksum {str(obj.model_checksum)[:12]}…), "
            f"not {chat_model.model_id} (checksum {chat_model.checksum[:12]}…)",
            hint="pass allow_transfer=True, or --allow-transfer on the command line, to use it on another model on purpose",
        )


@dataclass(repr=False, eq=False)
class DirectionMeta:
    """Where a direction came from, and how it is stored: the part every direction type shares.

    :class:`Direction`, :class:`LayerDirections` and :class:`DirectionGrid` extend it with
    their tensors. Its fields are keyword-only, after the tensors and layers of each type.
    Each is saved as ``NAME.safetensors`` (the tensors) + ``NAME.json`` (these fields, the
    type's own ones and a checksum of the tensors); :meth:`save` and :meth:`load` are
    shared, each type only says which tensors and fields it has.

    Example:
        >>> d = Direction(vector=torch.ones(4), layer=2, name="refusal", n_positive=3)
        >>> d.meta()["name"], d.meta()["n_positive"]
        ('refusal', 3)
    """

    name: str = field(default="direction", kw_only=True)
    """A label (``"refusal"``, ``"persona"`` …)."""
    model_id: str | None = field(default=None, kw_only=True)
    """Identity of the model it was extracted from (``None``: unknown, no check)."""
    model_checksum: str | None = field(default=None, kw_only=True)
    """Checksum of that model's weights."""
    n_positive: int | None = field(default=None, kw_only=True)
    """Number of prompts behind the positive mean."""
    n_negative: int | None = field(default=None, kw_only=True)
    """Number of prompts behind the negative (reference) mean."""
    provenance: dict = field(default_factory=dict, kw_only=True)
    """Free-form record of how it was made (prompt-set hashes, selection scores, …)."""

    _FORMAT: ClassVar[str] = _FORMAT
    """``format`` written into the JSON file."""
    _WHAT: ClassVar[str] = "direction"
    """What the type is called in messages."""
    _META: ClassVar[tuple[str, ...]] = ("name", "model_id", "model_checksum", "n_positive", "n_negative", "provenance")
    _TENSORS: ClassVar[tuple[str, ...]] = ()
    """Tensors a saved file of the type must hold."""
    _OPTIONAL_TENSOR: ClassVar[str | None] = None
    """A tensor field saved too when it is set (the reference mean)."""
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    """JSON fields a saved file of the type must hold (besides ``format``)."""
    _KIND: ClassVar[str] = "a direction"
    """What a file of the type holds, for messages (``"LayerDirections (one vector per layer)"``)."""

    def meta(self) -> dict[str, Any]:
        """The shared fields as keyword arguments (provenance copied), for a derived object."""
        out = {k: getattr(self, k) for k in self._META}
        out["provenance"] = dict(self.provenance)
        return out

    def check(self: _Saved, chat_model: "ChatModel", *, allow_transfer: bool = False) -> _Saved:
        """Raise :class:`DirectionMismatchError` unless this fits ``chat_model``.

        Width must match. The model id and weights checksum must match too, unless
        ``allow_transfer`` (using a direction on another model on purpose).
        """
        check_model(self, chat_model, allow_transfer, f"{self._WHAT} {self.name!r}")
        return self

    # -------------------------------------------------------------- io, per type
    def _tensors(self) -> dict[str, Tensor]:
        """The tensors to save: those of :attr:`_TENSORS`, and :attr:`_OPTIONAL_TENSOR` when set."""
        tensors = {k: getattr(self, k) for k in self._TENSORS}
        extra = self._OPTIONAL_TENSOR
        if extra is not None and getattr(self, extra) is not None:
            tensors[extra] = getattr(self, extra)
        return tensors

    def _fields(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """The type's own JSON fields (besides the shared ones)."""
        raise NotImplementedError

    @classmethod
    def _from_saved(cls: type[_Saved], meta: dict, tensors: dict[str, Tensor], shared: dict) -> _Saved:  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- io, shared
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the JSON path."""
        t_path, j_path = _paths(path)
        tensors = self._tensors()
        write_tensors(t_path, tensors, metadata={"format": _FORMAT})
        meta = {k: getattr(self, k) for k in self._META}
        write_json(j_path, {"format": self._FORMAT, **self._fields(), **meta, "tensors_sha256": _tensor_digest(tensors)})
        return j_path

    @classmethod
    def load(cls: type[_Saved], path: str | os.PathLike, *, chat_model: "ChatModel | None" = None,
             allow_transfer: bool = False) -> _Saved:
        """Load a saved object (either file of the pair), checking it against ``chat_model``.

        A file of another type (a :class:`LayerDirections` file given to
        ``Direction.load`` …), a missing field or tensor, or a field of the wrong type
        raises a one-line error that names the file.
        """
        t_path, j_path = _paths(path)
        meta, tensors = _read_pair(t_path, j_path, cls)
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name in cls._META}
        shared = {k: meta.get(k, defaults[k]) for k in cls._META if k != "provenance"}
        shared["provenance"] = meta.get("provenance") or {}
        try:
            _check_shared(shared)
            obj = cls._from_saved(meta, tensors, shared)
        except ConfigError as e:  # a field of the wrong type or value: name the file
            raise ConfigError(f"{cls._WHAT} file {j_path}: {e}") from None
        if chat_model is not None:
            obj.check(chat_model, allow_transfer=allow_transfer)
        return obj


def _check_shared(shared: dict) -> None:
    """Types of the shared fields read from a file."""
    if not isinstance(shared["name"], str):
        raise ConfigError(f"name must be text, got {_shown(shared['name'])}")
    for key in ("model_id", "model_checksum"):
        if shared[key] is not None and not isinstance(shared[key], str):
            raise ConfigError(f"{key} must be text or null, got {_shown(shared[key])}")
    for key in ("n_positive", "n_negative"):
        if shared[key] is not None:
            shared[key] = as_integer(shared[key], key, minimum=0)
    if not isinstance(shared["provenance"], dict):
        raise ConfigError(f"provenance must be a JSON object, got {_shown(shared['provenance'])}")


@checked
@dataclass(repr=False, eq=False)
class Direction(DirectionMeta):
    """A direction in the residual stream, with where it lives and where it came from.

    Example:
        >>> d = Direction(vector=torch.ones(4), layer=2)
        >>> d.hook_name, round(d.norm, 3)
        ('blocks.2.hook_resid_pre', 2.0)
    """

    vector: Float[Tensor, "d_model"]
    """The raw direction (for diff-in-means: harmful mean − harmless mean), not normalised."""
    layer: int
    """Layer it was read at (``blocks.{layer}.hook_resid_pre`` is the input of block ``layer``)."""
    reference: Float[Tensor, "d_model"] | None = None
    """Reference point for affine edits: the negative-class (e.g. harmless) mean."""
    hook_name: str | None = None
    """Full hook name it was read at, ``blocks.{layer}.hook_{site}`` with a site of :data:`HOOK_SITES`
    and this ``layer``; defaults to ``blocks.{layer}.hook_resid_pre``."""
    position: int | None = -1
    """Token position it was read at, counted from the end of the prompt (``-1`` = last)."""

    def __post_init__(self) -> None:
        v = _float_tensor(self.vector, "a direction's vector", 1)
        if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0.0:
            raise ConfigError("a direction's vector must be finite and non-zero")
        self.vector = v.detach().to(torch.float32).cpu()
        if self.reference is not None:
            ref = _float_tensor(self.reference, "a direction's reference", 1).detach().to(torch.float32).cpu()
            if ref.shape != self.vector.shape:
                raise ConfigError(f"reference has shape {tuple(ref.shape)}, vector has {tuple(self.vector.shape)}")
            if not bool(torch.isfinite(ref).all()):
                raise ConfigError("a direction's reference mean must be finite (it holds NaN or inf)")
            self.reference = ref
        self.layer = as_integer(self.layer, "layer", minimum=0)
        if self.position is not None:
            self.position = as_integer(self.position, "position")
        self.hook_name = _hook_for(self.layer) if self.hook_name is None else _check_hook_name(self.hook_name, self.layer)

    # -------------------------------------------------------------- views
    @property
    def d_model(self) -> int:
        """Width of the vector."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """Euclidean norm of the raw vector."""
        return float(self.vector.norm())

    @property
    def unit(self) -> Float[Tensor, "d_model"]:
        """The unit vector ``r̂``."""
        return ops.unit(self.vector)

    @property
    def has_reference(self) -> bool:
        """Whether a reference mean (needed by affine edits) is attached."""
        return self.reference is not None

    def vector_at(self, layer: int) -> Float[Tensor, "d_model"]:
        """The raw vector an edit at ``layer`` uses: the same one at every layer."""
        return self.vector

    def reference_at(self, layer: int) -> Float[Tensor, "d_model"] | None:
        """The reference mean an edit at ``layer`` uses (``None`` when there is none)."""
        return self.reference

    def rescaled(self, norm: float) -> "Direction":
        """The same direction with its vector rescaled to ``norm``."""
        return self.replace(vector=self.unit * float(norm))

    def replace(self, **changes: Any) -> "Direction":
        """A copy with some fields changed."""
        fields = {k: getattr(self, k) for k in ("vector", "layer", "reference", "hook_name", "position")}
        fields.update(self.meta())
        if "layer" in changes and "hook_name" not in changes:
            fields["hook_name"] = None
        fields.update(changes)
        return Direction(**fields)

    def at(self, layer: int) -> "Direction":
        """This direction, for an edit at ``layer`` (the same vector at every layer)."""
        return self

    # -------------------------------------------------------------- io
    def _fields(self) -> dict[str, Any]:
        return {"layer": self.layer, "hook_name": self.hook_name, "position": self.position,
                "d_model": self.d_model, "norm": self.norm}

    _TENSORS: ClassVar[tuple[str, ...]] = ("vector",)
    _OPTIONAL_TENSOR: ClassVar[str | None] = "reference"
    _FIELDS: ClassVar[tuple[str, ...]] = ("layer",)
    _KIND: ClassVar[str] = "a Direction (one vector)"

    @classmethod
    def _from_saved(cls, meta: dict, tensors: dict[str, Tensor], shared: dict) -> "Direction":
        return cls(vector=tensors["vector"], layer=meta["layer"], reference=tensors.get("reference"),
                   hook_name=meta.get("hook_name"), position=meta.get("position"), **shared)

    def __repr__(self) -> str:
        counts = f", n={self.n_positive}/{self.n_negative}" if self.n_positive is not None else ""
        ref = ", reference" if self.reference is not None else ""
        return (
            f"Direction({self.name!r}, layer={self.layer}, hook={self.hook_name}, position={self.position}, "
            f"norm={self.norm:.3g}, d_model={self.d_model}{counts}{ref}, model={self.model_id})"
        )


def _saved_types() -> dict[str, type[DirectionMeta]]:
    """The direction types by the ``format`` their files record."""
    return {c._FORMAT: c for c in (Direction, LayerDirections, DirectionGrid)}


def _read_pair(t_path: Path, j_path: Path, cls: type[DirectionMeta]) -> tuple[dict, dict[str, Tensor]]:
    """The JSON metadata and the tensors of a saved ``cls``, checked to be a file of that
    type with every field and tensor it needs."""
    what, save = cls._WHAT, f"save one with {cls.__name__}.save"
    hint = "save writes a .safetensors and a .json file"
    if not t_path.is_file():
        raise DirectionMismatchError(f"{what} file {t_path} is missing", hint=hint)
    meta = read_json_checked(j_path, DirectionMismatchError, missing=f"{what} file {j_path} is missing", hint=hint)
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("persona_refusal."):
        raise DirectionMismatchError(f"{j_path} is not a persona_refusal {what} file")
    fmt = str(meta["format"])
    if fmt != cls._FORMAT:
        other = _saved_types().get(fmt)
        article = "a " if cls._KIND.startswith("a ") else ""
        expected = f"{article}{cls.__name__}"
        if other is not None:
            held = other._KIND
            held = f"a persona_refusal {held[2:]}" if held.startswith("a ") else f"persona_refusal {held}"
            raise DirectionMismatchError(f"{j_path} holds {held}, not {expected}", hint=save)
        if fmt.rsplit("/", 1)[0] == cls._FORMAT.rsplit("/", 1)[0]:
            raise DirectionMismatchError(
                f"{j_path} is a {what} file in format {fmt!r}, which this version of persona_refusal cannot read "
                f"(it reads {cls._FORMAT!r})", hint="save it again with this version, or upgrade persona_refusal")
        raise DirectionMismatchError(f"{j_path} is a persona_refusal file of format {fmt!r}, not {expected}", hint=save)
    missing = [k for k in cls._FIELDS if k not in meta]
    if missing:
        raise DirectionMismatchError(f"{what} file {j_path} has no {missing[0]!r} field", hint=save)
    try:
        tensors = read_tensors(t_path)
    except Exception as e:
        raise DirectionMismatchError(f"{t_path} is not a readable safetensors file ({type(e).__name__})") from None
    missing = [k for k in cls._TENSORS if k not in tensors]
    if missing:
        held = f"it holds {sorted(tensors)}" if tensors else "it holds none"
        raise DirectionMismatchError(f"{what} file {t_path} has no {missing[0]!r} tensor ({held})", hint=save)
    if meta.get("tensors_sha256") and _tensor_digest(tensors) != meta["tensors_sha256"]:
        raise DirectionMismatchError(f"{t_path} and {j_path} do not belong together (tensor checksum differs)")
    return meta, tensors


@checked
@dataclass(repr=False, eq=False)
class LayerDirections(DirectionMeta):
    """One direction per layer (e.g. every layer's diff-in-means at the last token).

    Interventions given a ``LayerDirections`` use, at layer ``l``, the direction read at
    ``l``. ``at(l)`` returns it as a :class:`Direction`.

    Example:
        >>> ld = LayerDirections(vectors=torch.randn(4, 8), layers=(0, 1, 2, 3), name="persona")
        >>> ld.at(2).hook_name, ld.d_model
        ('blocks.2.hook_resid_pre', 8)
    """

    vectors: Float[Tensor, "n_layers d_model"]
    """Raw direction per layer, indexed like ``layers``."""
    layers: tuple[int, ...]
    """The layers (``resid_pre`` indices) of the rows of ``vectors``."""
    references: Float[Tensor, "n_layers d_model"] | None = None
    """Negative-class mean per layer (for affine edits)."""
    position: int | None = -1
    """Token position (from the end) they were read at."""
    name: str = field(default="directions", kw_only=True)
    """A label."""

    _FORMAT: ClassVar[str] = "persona_refusal.layer_directions/1"
    _WHAT: ClassVar[str] = "directions"
    _TENSORS: ClassVar[tuple[str, ...]] = ("vectors",)
    _OPTIONAL_TENSOR: ClassVar[str | None] = "references"
    _FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    _KIND: ClassVar[str] = "LayerDirections (one vector per layer)"

    def __post_init__(self) -> None:
        self.layers = _integers(self.layers, "layers", minimum=0)
        vectors = torch.as_tensor(self.vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.layers):
            raise ConfigError(f"vectors {tuple(vectors.shape)} do not match {len(self.layers)} layers")
        self.vectors = _float_tensor(vectors, "per-layer vectors", 2).detach().to(torch.float32).cpu()
        if not bool(torch.isfinite(self.vectors).all()):
            raise ConfigError(f"{self.name!r}: the per-layer vectors must be finite (they hold NaN or inf)")
        if self.references is not None:
            self.references = _float_tensor(self.references, "references", 2).detach().to(torch.float32).cpu()
            if self.references.shape != self.vectors.shape:
                raise ConfigError("references must have the shape of vectors")
            if not bool(torch.isfinite(self.references).all()):
                raise ConfigError(f"{self.name!r}: the reference means must be finite (they hold NaN or inf)")
        if self.position is not None:
            self.position = as_integer(self.position, "position")

    @property
    def d_model(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    @property
    def norms(self) -> Float[Tensor, "n_layers"]:
        """Norm of each layer's raw vector."""
        return self.vectors.norm(dim=-1)

    @property
    def has_reference(self) -> bool:
        """Whether reference means (needed by affine edits) are attached."""
        return self.references is not None

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise ConfigError(f"{self.name!r} has no direction at layer {layer}")
        return self.layers.index(layer)

    def vector_at(self, layer: int) -> Float[Tensor, "d_model"]:
        """The raw vector read at ``layer`` (a zero row is returned as it is).

        Example:
            >>> LayerDirections(vectors=torch.eye(2), layers=(3, 4)).vector_at(4)
            tensor([0., 1.])
        """
        return self.vectors[self._row(layer)]

    def reference_at(self, layer: int) -> Float[Tensor, "d_model"] | None:
        """The reference mean read at ``layer`` (``None`` when there are none)."""
        i = self._row(layer)
        return None if self.references is None else self.references[i]

    def is_zero(self, layer: int) -> bool:
        """Whether the direction at ``layer`` is exactly zero (both sides identical there,
        e.g. at layer 0 on a chat-template token every prompt shares)."""
        return float(self.vectors[self.layers.index(layer)].norm()) == 0.0

    def at(self, layer: int) -> Direction:
        """The direction read at ``layer``."""
        if layer not in self.layers:
            raise ConfigError(f"{self.name!r} has no direction at layer {layer} (it has {self.layers[0]}..{self.layers[-1]})")
        if self.is_zero(layer):
            raise ConfigError(f"{self.name!r} is zero at layer {layer}: both sides have identical activations there")
        return Direction(vector=self.vector_at(layer), layer=layer, reference=self.reference_at(layer),
                         position=self.position, **self.meta())

    def check(self, chat_model: "ChatModel", *, allow_transfer: bool = False) -> "LayerDirections":
        """As :meth:`Direction.check`; also every layer must exist in the model."""
        super().check(chat_model, allow_transfer=allow_transfer)
        bad = [l for l in self.layers if l >= chat_model.n_layers + 1]
        if bad:
            raise DirectionMismatchError(f"directions {self.name!r} have layers {bad} beyond the model's {chat_model.n_layers}")
        return self

    def _fields(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "position": self.position, "d_model": self.d_model}

    @classmethod
    def _from_saved(cls, meta: dict, tensors: dict[str, Tensor], shared: dict) -> "LayerDirections":
        return cls(vectors=tensors["vectors"], layers=_listed(meta["layers"]), references=tensors.get("references"),
                   position=meta.get("position"), **shared)

    def __repr__(self) -> str:
        n = self.norms
        return (
            f"LayerDirections({self.name!r}, layers={self.layers[0]}..{self.layers[-1]} ({len(self.layers)}), "
            f"position={self.position}, norms={float(n.min()):.3g}..{float(n.max()):.3g}, d_model={self.d_model}, "
            f"n={self.n_positive}/{self.n_negative}, model={self.model_id})"
        )


@checked
@dataclass(repr=False, eq=False)
class DirectionGrid(DirectionMeta):
    """Difference-in-means candidates over positions × layers (Arditi et al.).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> grid = extract_directions(cm, ["Tell me how to pick a lock."], ["Bake bread."], positions=[-1], progress=False)
        >>> grid.diff.shape
        torch.Size([1, 4, 64])
        >>> grid.direction(-1, 2).hook_name
        'blocks.2.hook_resid_pre'
    """

    positive_mean: Float[Tensor, "n_pos n_layers d_model"]
    """Mean activation of the positive set (e.g. harmful), float64."""
    negative_mean: Float[Tensor, "n_pos n_layers d_model"]
    """Mean activation of the negative set (e.g. harmless), float64."""
    positions: tuple[int, ...]
    """Positions from the end of the prompt, one per row."""
    layers: tuple[int, ...]
    """Layers (``resid_pre`` indices), one per column."""
    name: str = field(default="refusal", kw_only=True)
    """Label given to directions taken from the grid."""
    n_positive: int = field(default=0, kw_only=True)
    """Number of positive prompts."""
    n_negative: int = field(default=0, kw_only=True)
    """Number of negative prompts."""

    _FORMAT: ClassVar[str] = "persona_refusal.direction_grid/1"
    _WHAT: ClassVar[str] = "direction grid"
    _TENSORS: ClassVar[tuple[str, ...]] = ("positive_mean", "negative_mean")
    _FIELDS: ClassVar[tuple[str, ...]] = ("positions", "layers")
    _KIND: ClassVar[str] = "a DirectionGrid (candidate directions per position and layer)"

    def __post_init__(self) -> None:
        self.positions = _integers(self.positions, "positions")
        self.layers = _integers(self.layers, "layers", minimum=0)
        for key in ("positive_mean", "negative_mean"):
            t = _float_tensor(getattr(self, key), key, 3)
            if tuple(t.shape[:2]) != (len(self.positions), len(self.layers)):
                raise ConfigError(f"{key} has shape {tuple(t.shape)}, not [{len(self.positions)} positions, "
                                  f"{len(self.layers)} layers, d_model]")
            setattr(self, key, t)
        if self.positive_mean.shape != self.negative_mean.shape:
            raise ConfigError(f"positive_mean {tuple(self.positive_mean.shape)} and negative_mean "
                              f"{tuple(self.negative_mean.shape)} differ in shape")

    @property
    def diff(self) -> Float[Tensor, "n_pos n_layers d_model"]:
        """The candidate directions, positive − negative mean."""
        return self.positive_mean - self.negative_mean

    @property
    def d_model(self) -> int:
        """Width of the vectors."""
        return int(self.positive_mean.shape[-1])

    def _index(self, position: int, layer: int) -> tuple[int, int]:
        if position not in self.positions:
            raise ConfigError(f"position {position} is not in the grid (positions {list(self.positions)})")
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} is not in the grid (layers {self.layers[0]}..{self.layers[-1]})")
        return self.positions.index(position), self.layers.index(layer)

    def direction(self, position: int, layer: int) -> Direction:
        """The candidate at (``position``, ``layer``), with the negative mean as reference."""
        i, j = self._index(position, layer)
        return Direction(vector=self.diff[i, j], layer=layer, reference=self.negative_mean[i, j], position=position,
                         **self.meta())

    def layer_directions(self, position: int = -1) -> LayerDirections:
        """Every layer's candidate at one position."""
        i, _ = self._index(position, self.layers[0])
        return LayerDirections(vectors=self.diff[i], layers=self.layers, references=self.negative_mean[i],
                               position=position, **self.meta())

    def _fields(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "layers": list(self.layers), "d_model": self.d_model}

    @classmethod
    def _from_saved(cls, meta: dict, tensors: dict[str, Tensor], shared: dict) -> "DirectionGrid":
        return cls(positive_mean=_float_tensor(tensors["positive_mean"], "positive_mean", 3).double(),
                   negative_mean=_float_tensor(tensors["negative_mean"], "negative_mean", 3).double(),
                   positions=_listed(meta["positions"]), layers=_listed(meta["layers"]), **shared)

    def __repr__(self) -> str:
        return (
            f"DirectionGrid({self.name!r}, positions={list(self.positions)}, layers={self.layers[0]}..{self.layers[-1]}, "
            f"d_model={self.d_model}, n={self.n_positive}/{self.n_negative}, model={self.model_id})"
        )
