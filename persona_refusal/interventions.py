"""Edits to the residual stream, described by frozen dataclasses and applied as hooks.

Context
-------
An intervention here only *describes* an edit — which direction, where, how strong. It
turns into TransformerLens forward hooks on named hook points (``blocks.12.hook_resid_pre``
…) when applied, and :func:`apply` is the one way to apply any number of them::

    with apply(chat_model, Ablate(refusal), AddVector(persona, 3.0, layer=16)):
        logits = chat_model.model(tokens)

The hooks are added through ``model.hooks(...)``, which removes them in a ``finally``:
no hook is left on the model after the block, also after an exception or Ctrl-C.

* :class:`Ablate` — directional ablation ``x − (x·r̂) r̂`` (Arditi et al.), by default at
  every layer on ``resid_pre``, ``attn_out`` and ``mlp_out``, at every position including
  generated ones. Restricted to a window of layers and ``resid_pre`` it is a *knockout*.
* :class:`AddVector` — activation addition ``x + c·v`` at ``blocks.{layer}.hook_resid_pre``,
  every position. "Adding at block *b*'s output" is ``layer = b + 1``.
* :class:`AffineEdit` — affine concept editing (ACE, Marshall et al.)
  ``x − ((x − μ)·r̂) r̂ + α·r`` with ``μ`` the direction's reference (harmless) mean.
* :class:`Patch` — activation patching: overwrite a hook's activations at chosen positions
  with those cached from another run on the same prompts.
* :func:`orthogonalize_weights` — the permanent twin of :class:`Ablate`: project ``r̂`` out
  of every matrix and bias that writes to the residual stream. Same logits as the hooks.

Interventions compose in the order given; directions are checked against the model
first (width, and model identity unless ``allow_transfer``). Strengths must be finite
numbers (a 0-d tensor or numpy scalar is taken as its ``float``), the vectors an edit uses
must be finite, and what it adds (``|coeff·v|``, also summed over the edits applied
together) must fit the model's float dtype: each is a one-line :class:`ConfigError`
before any hook is added.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from persona_refusal.checks import checked
from persona_refusal import ops
from persona_refusal.directions import HOOK_SITES, Direction, LayerDirections, as_integer, as_number
from persona_refusal.errors import ConfigError
from persona_refusal.hooks import HookFn, for_condition

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = [
    "Intervention",
    "Ablate",
    "AddVector",
    "AffineEdit",
    "Patch",
    "apply",
    "apply_conditions",
    "orthogonalize_weights",
    "ALL_SITES",
]

ALL_SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")
"""Where directional ablation acts by default: everything that writes the residual stream."""

DirectionLike = Union[Direction, LayerDirections]


class Intervention:
    """Base class: a description of an edit that yields TransformerLens hooks.

    Example:
        >>> Ablate(Direction(vector=torch.ones(4), layer=1, name="r")).describe()
        {'type': 'Ablate', 'direction': 'r', 'layers': None, 'sites': ['resid_pre', 'attn_out', 'mlp_out']}
    """

    def validate(self, chat_model: "ChatModel") -> None:  # pragma: no cover - overridden
        """Raise a one-line error if the edit does not fit the model."""

    def hooks(self, chat_model: "ChatModel") -> list[tuple[str, HookFn]]:  # pragma: no cover
        """``(hook_name, fn)`` pairs; ``fn(act, hook)`` returns the edited activation."""
        raise NotImplementedError

    def hook_layers(self, chat_model: "ChatModel") -> list[int]:
        """The blocks whose hooks this edit uses (from its TransformerLens hook names), sorted."""
        return sorted({int(name.split(".")[1]) for name, _ in self.hooks(chat_model) if name.startswith("blocks.")})

    def min_layer(self, chat_model: "ChatModel") -> int:
        """Earliest block whose input this edit can change (for resuming a run mid-model)."""
        layers = self.hook_layers(chat_model)
        return layers[0] if layers else 0

    def describe(self) -> dict:
        """A JSON-able description, for results and provenance."""
        return {"type": type(self).__name__}

    def _added_norm(self, chat_model: "ChatModel") -> float:
        """An upper bound on the norm this edit adds to an activation (0 for edits that only remove)."""
        return 0.0


def _check_direction(direction, chat_model: "ChatModel", allow_transfer: bool) -> None:
    if not isinstance(direction, (Direction, LayerDirections)):
        raise ConfigError(f"expected a Direction or LayerDirections, got {type(direction).__name__}")
    direction.check(chat_model, allow_transfer=allow_transfer)


def _check_finite(direction: DirectionLike, layers: Sequence[int], which: str = "vector") -> None:
    """The vectors (or reference means) an edit uses at ``layers`` hold no NaN or inf (they
    are checked when made; this catches tensors edited in place since)."""
    if isinstance(direction, Direction):
        layers = list(layers)[:1]  # one vector at every layer
    for layer in layers:
        v = direction.vector_at(layer) if which == "vector" else direction.reference_at(layer)
        if v is not None and not bool(torch.isfinite(v).all()):
            what = "vector" if which == "vector" else "reference mean"
            where = f" at layer {layer}" if isinstance(direction, LayerDirections) else ""
            raise ConfigError(f"direction {direction.name!r} has a non-finite {what}{where} (NaN or inf)",
                              hint="use a direction with finite values")


def _max_value(chat_model: "ChatModel") -> float:
    """The largest finite value of the model's activations (float32 unless the model is in another float dtype)."""
    dtype = chat_model.model.cfg.dtype
    return float(torch.finfo(dtype if dtype.is_floating_point else torch.float32).max)


def _dtype_name(chat_model: "ChatModel") -> str:
    dtype = chat_model.model.cfg.dtype
    return str(dtype if dtype.is_floating_point else torch.float32).replace("torch.", "")


def _check_size(size: float, what: str, chat_model: "ChatModel") -> None:
    """``size`` (a norm that an edit adds to the residual stream) fits the activations' dtype."""
    if not size <= _max_value(chat_model):  # also catches inf and NaN
        raise ConfigError(f"{what} adds a vector of norm {size:.3g}, which overflows {_dtype_name(chat_model)} "
                          f"(largest {_max_value(chat_model):.3g})", hint="use a smaller strength")


def _check_stacked(interventions: Sequence["Intervention"], chat_model: "ChatModel") -> None:
    """The vectors added by all of ``interventions`` together fit the activations' dtype."""
    total = sum(iv._added_norm(chat_model) for iv in interventions)
    if len(interventions) > 1 and not total <= _max_value(chat_model):
        raise ConfigError(f"the {len(interventions)} edits together add vectors of norm up to {total:.3g}, which "
                          f"overflows {_dtype_name(chat_model)} (largest {_max_value(chat_model):.3g})",
                          hint="use smaller strengths or fewer additions")


def _layer_device(chat_model: "ChatModel", layer: int) -> torch.device:
    """The device of block ``layer``'s weights (``n_layers``: the last block's), where its
    hooks see the activations (a model split over several GPUs has several)."""
    block = chat_model.model.blocks[min(layer, chat_model.n_layers - 1)]
    return next(block.parameters(), chat_model.model.W_E).device


def _vec(direction: DirectionLike, layer: int, which: str = "vector") -> Tensor:
    """The vector an edit at ``layer`` uses, float32 on the CPU, as directions store it.

    LayerDirections give their raw row at ``layer`` (zero rows allowed); a Direction its one
    vector. What a hook derives from it (a unit vector, an offset) is computed from this at
    full precision, with no read-back from a GPU; :func:`_in_model` then places the result
    once where the hook runs."""
    v = direction.vector_at(layer) if which == "vector" else direction.reference_at(layer)
    if v is None:
        raise ConfigError(f"direction {direction.name!r} has no {which} (needed for this edit)")
    return v.to(device="cpu", dtype=torch.float32)


def _in_model(t: Tensor, chat_model: "ChatModel", layer: int) -> Tensor:
    """A hook's operand in the model's dtype on block ``layer``'s device (cast once, when the
    hook is made; :mod:`persona_refusal.ops` still casts to each activation's device and
    dtype should one differ)."""
    return t.to(device=_layer_device(chat_model, layer), dtype=chat_model.model.cfg.dtype)


def _layers_of(direction: DirectionLike, layers, chat_model: "ChatModel") -> list[int]:
    if layers is None:
        if isinstance(direction, LayerDirections):
            return [l for l in direction.layers if l < chat_model.n_layers]
        return list(range(chat_model.n_layers))
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ConfigError(f"layers must be a list of integers, got {layers!r}", hint="write it as a list, e.g. [0, 4, 8]")
    return [chat_model.check_layer(as_integer(l, "layer")) for l in layers]


def _is_zero(v: Tensor) -> bool:
    return float(v.norm()) == 0.0


def _position_index(positions: Sequence[int] | None) -> list[int] | None:
    if positions is None:
        return None
    pos = [as_integer(p, "position") for p in positions]
    if any(p >= 0 for p in pos):
        raise ConfigError(f"positions are counted from the end of the prompt and must be negative, got {pos}")
    return pos


@checked
@dataclass(frozen=True, eq=False)
class Ablate(Intervention):
    """Directional ablation ``x − (x·r̂) r̂`` (Arditi et al. 2024).

    Example:
        >>> with apply(cm, Ablate(refusal)):            # doctest: +SKIP
        ...     text = generate(cm, ["How do I pick a lock?"])
    """

    direction: DirectionLike
    """The direction (or per-layer directions: layer ``l`` then uses its own)."""
    layers: Sequence[int] | None = None
    """Layers to ablate at (default: every layer of the model)."""
    sites: Sequence[str] = ALL_SITES
    """Hook sites per layer: any of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``."""
    allow_transfer: bool = False
    """Use a direction made with another model on purpose."""

    def validate(self, chat_model: "ChatModel") -> None:
        _check_direction(self.direction, chat_model, self.allow_transfer)
        bad = [s for s in self.sites if s not in HOOK_SITES]
        if bad:
            raise ConfigError(f"unknown hook sites {bad}")
        _check_finite(self.direction, _layers_of(self.direction, self.layers, chat_model))

    def hooks(self, chat_model: "ChatModel") -> list[tuple[str, HookFn]]:
        out = []
        for layer in _layers_of(self.direction, self.layers, chat_model):
            v = _vec(self.direction, layer)
            if _is_zero(v):  # a zero direction (e.g. layer 0 at a template token): nothing to remove
                continue
            r_hat = _in_model(ops.unit(v), chat_model, layer)  # normalised in float32, then cast

            def fn(act, hook, r_hat=r_hat):
                return ops.project_out_unit(act, r_hat)

            out.extend((chat_model.hook_name(layer, site), fn) for site in self.sites)
        return out

    def describe(self) -> dict:
        return {"type": "Ablate", "direction": self.direction.name, "layers": _jsonable_layers(self.layers),
                "sites": list(self.sites)}

    def __repr__(self) -> str:
        every = "every layer of the directions" if isinstance(self.direction, LayerDirections) else "every layer"
        return (f"Ablate({_direction_text(self.direction)}, layers={_layers_text(self.layers, every)}, "
                f"sites={'+'.join(self.sites)}{_transfer_text(self.allow_transfer)})")


@checked
@dataclass(frozen=True, eq=False)
class AddVector(Intervention):
    """Activation addition ``x + coeff·v`` at ``blocks.{layer}.hook_resid_pre``, every position.

    ``v`` is the direction's raw vector (use ``direction.rescaled(s)`` for unit-times-``s``
    steering). ``layer`` defaults to the direction's own layer; ``layer = n_layers`` adds
    to the final residual stream (``blocks.{n_layers-1}.hook_resid_post``).

    Example:
        >>> d = Direction(vector=torch.ones(4), layer=2, name="refusal")
        >>> AddVector(d, 3.0)
        AddVector('refusal' (layer 2, |v|=2), coeff=3, layer=2 (resid_pre), |coeff·v|=6)
        >>> with apply(cm, AddVector(refusal, 4.0, layer=15)):   # doctest: +SKIP
        ...     replies = generate(cm, ["How do I bake bread?"])
    """

    direction: DirectionLike
    """What to add."""
    coeff: float
    """Strength ``c``: a finite number (an int, numpy scalar or 0-d tensor is stored as its ``float``)."""
    layer: int | None = None
    """Where (``resid_pre`` index; default: the direction's layer)."""
    allow_transfer: bool = False
    """Use a direction made with another model on purpose."""

    def __post_init__(self) -> None:
        # A number of any kind (int, numpy scalar, 0-d tensor) is kept as a float; NaN and inf are refused here.
        object.__setattr__(self, "coeff", as_number(self.coeff, "AddVector strength coeff"))
        if self.layer is not None:
            object.__setattr__(self, "layer", as_integer(self.layer, "AddVector layer"))

    def _own_layer(self) -> int | None:
        if self.layer is not None:
            return self.layer
        return None if isinstance(self.direction, LayerDirections) else self.direction.layer

    def _layer(self, chat_model: "ChatModel") -> int:
        layer = self._own_layer()
        if layer is None:
            raise ConfigError("AddVector with per-layer directions needs an explicit layer")
        return chat_model.check_layer(layer, allow_end=True)

    def validate(self, chat_model: "ChatModel") -> None:
        _check_direction(self.direction, chat_model, self.allow_transfer)
        layer = self._layer(chat_model)
        _check_finite(self.direction, [layer])
        _check_size(self._added_norm(chat_model), f"AddVector (coeff={self.coeff:g}, layer {layer})", chat_model)

    def _added_norm(self, chat_model: "ChatModel") -> float:
        v = self.direction.vector_at(self._layer(chat_model))
        return abs(self.coeff) * float(v.double().norm())

    def hooks(self, chat_model: "ChatModel") -> list[tuple[str, HookFn]]:
        layer = self._layer(chat_model)
        v, coeff = _in_model(_vec(self.direction, layer), chat_model, layer), float(self.coeff)

        def fn(act, hook):
            return ops.add_vector(act, v, coeff)

        if layer == chat_model.n_layers:
            return [(chat_model.hook_name(layer - 1, "resid_post"), fn)]
        return [(chat_model.hook_name(layer, "resid_pre"), fn)]

    def describe(self) -> dict:
        return {"type": "AddVector", "direction": self.direction.name, "coeff": float(self.coeff), "layer": self.layer}

    def __repr__(self) -> str:
        layer = self._own_layer()
        where = "layer=? (per-layer directions need an explicit layer)" if layer is None else f"layer={layer} (resid_pre)"
        norm = _norm_at(self.direction, layer)
        size = "" if norm is None else f", |coeff·v|={abs(float(self.coeff)) * norm:.3g}"
        return (f"AddVector({_direction_text(self.direction)}, coeff={float(self.coeff):g}, {where}{size}"
                f"{_transfer_text(self.allow_transfer)})")


@checked
@dataclass(frozen=True, eq=False)
class AffineEdit(Intervention):
    """Affine concept editing (ACE): ``x − ((x − μ)·r̂) r̂ + α·r`` at ``resid_pre``.

    ``μ`` is the direction's reference mean. With ``α = 0`` every activation's
    projection onto ``r̂`` becomes ``μ·r̂`` (the harmless level); with ``α = 1`` and a
    diff-in-means ``r`` it becomes the harmful mean's projection.

    Example:
        >>> d = Direction(vector=torch.ones(4), layer=2, reference=torch.zeros(4), name="refusal")
        >>> AffineEdit(d, 0.0)
        AffineEdit('refusal' (layer 2, |v|=2), alpha=0, layers=[2] (resid_pre), reference=yes)
    """

    direction: DirectionLike
    """The direction; needs a ``reference``."""
    alpha: float
    """Target position along ``r``, in units of ``r``, from the reference (a finite number, stored as a ``float``)."""
    layers: Sequence[int] | None = None
    """Layers to edit (default: the direction's layer; every layer of a ``LayerDirections``)."""
    allow_transfer: bool = False
    """Use a direction made with another model on purpose."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", as_number(self.alpha, "AffineEdit alpha"))

    def _layers(self, chat_model: "ChatModel") -> list[int]:
        if self.layers is None and isinstance(self.direction, Direction):
            return [chat_model.check_layer(self.direction.layer)]
        return _layers_of(self.direction, self.layers, chat_model)

    def validate(self, chat_model: "ChatModel") -> None:
        _check_direction(self.direction, chat_model, self.allow_transfer)
        layers = self._layers(chat_model)
        for layer in layers:
            _vec(self.direction, layer, "reference")
        _check_finite(self.direction, layers)
        _check_finite(self.direction, layers, "reference")
        _check_size(self._added_norm(chat_model), f"AffineEdit (alpha={self.alpha:g})", chat_model)

    def _added_norm(self, chat_model: "ChatModel") -> float:
        # |(μ·r̂) r̂ + α·r| ≤ |μ| + |α|·|r|, at each edited layer
        sizes = [float(self.direction.reference_at(l).double().norm())
                 + abs(self.alpha) * float(self.direction.vector_at(l).double().norm()) for l in self._layers(chat_model)]
        return max(sizes, default=0.0)

    def hooks(self, chat_model: "ChatModel") -> list[tuple[str, HookFn]]:
        out = []
        for layer in self._layers(chat_model):
            r = _vec(self.direction, layer)
            if _is_zero(r):
                continue
            mu = _vec(self.direction, layer, "reference")
            # computed in float32, then cast to the model's dtype
            r_hat = _in_model(ops.unit(r), chat_model, layer)
            offset = _in_model(ops.affine_offset(r, mu, float(self.alpha)), chat_model, layer)

            def fn(act, hook, r_hat=r_hat, offset=offset):
                return ops.affine_edit_unit(act, r_hat, offset)

            out.append((chat_model.hook_name(layer, "resid_pre"), fn))
        return out

    def describe(self) -> dict:
        return {"type": "AffineEdit", "direction": self.direction.name, "alpha": float(self.alpha),
                "layers": _jsonable_layers(self.layers)}

    def __repr__(self) -> str:
        if self.layers is None and isinstance(self.direction, Direction):
            layers = f"[{self.direction.layer}]"
        else:
            layers = _layers_text(self.layers, "every layer of the directions")
        has_ref = self.direction.has_reference
        return (f"AffineEdit({_direction_text(self.direction)}, alpha={float(self.alpha):g}, layers={layers} (resid_pre), "
                f"reference={'yes' if has_ref else 'MISSING'}{_transfer_text(self.allow_transfer)})")


@checked
@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """Activation patching: set ``hook_name``'s activations at ``positions`` to cached ones.

    ``source`` holds one row per prompt, ``[n_prompts, len(positions), d]``, cached from
    another run on the *same prompts in the same order* (e.g. with
    :func:`persona_refusal.activations.cache_activations`). Inside the batched runners of
    this package each batch takes its own rows; called directly, the batch must hold all
    prompts. Positions are counted from the end of the prompt; generated tokens are not
    patched.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> prompts = ["Hi", "Hello there"]
        >>> source = cache_activations(cm, prompts, positions=[-1], layers=[2], progress=False)[:, :, 0]
        >>> patch = Patch("blocks.2.hook_resid_pre", source, positions=(-1,))
        >>> patch
        Patch(blocks.2.hook_resid_pre, positions=[-1], source=[2 × 1 × 64] (prompts × positions × d))
        >>> last_logits(cm, prompts, interventions=[patch], progress=False).shape
        torch.Size([2, 384])
    """

    hook_name: str
    """Full hook name, e.g. ``blocks.10.hook_resid_pre``."""
    source: Float[Tensor, "n_prompts n_pos d"]
    """Cached activations to write in."""
    positions: Sequence[int] = (-1,)
    """Positions from the end of the prompt."""

    def validate(self, chat_model: "ChatModel") -> None:
        if self.hook_name not in chat_model.model.hook_dict:
            raise ConfigError(f"unknown hook point {self.hook_name!r}")
        pos = _position_index(self.positions)
        if not isinstance(self.source, torch.Tensor):
            raise ConfigError(f"patch source must be a tensor, got {type(self.source).__name__}",
                              hint="cache it with cache_activations")
        if self.source.ndim != 3 or self.source.shape[1] != len(pos):
            raise ConfigError(f"patch source must be [n_prompts, {len(pos)}, d], got {tuple(self.source.shape)}")
        if self.source.shape[2] != chat_model.d_model:
            raise ConfigError(f"patch source has width {self.source.shape[2]} but {chat_model.model_id} has d_model "
                              f"{chat_model.d_model}", hint="cache the source with this model")
        if not bool(torch.isfinite(self.source).all()):
            raise ConfigError(f"patch source for {self.hook_name} holds NaN or inf", hint="cache it from a run with finite activations")

    def hooks(self, chat_model: "ChatModel") -> list[tuple[str, HookFn]]:
        pos = _position_index(self.positions)
        state = chat_model._state
        src = self.source.to(device=chat_model.device, dtype=chat_model.model.cfg.dtype)

        def fn(act, hook):
            if not state.at_prompt_positions:
                return act
            rows = state.rows
            if rows is not None and int(rows.max()) >= src.shape[0]:
                raise ConfigError(f"patch source has {src.shape[0]} rows but prompt {int(rows.max())} is in this run")
            values = src if rows is None else src[rows.to(src.device)]
            if values.shape[0] != act.shape[0]:
                raise ConfigError(f"patch source has {values.shape[0]} rows for a batch of {act.shape[0]}")
            act = act.clone()
            act[:, pos] = values.to(device=act.device, dtype=act.dtype)
            return act

        return [(self.hook_name, fn)]

    def describe(self) -> dict:
        return {"type": "Patch", "hook_name": self.hook_name, "positions": list(self.positions)}

    def __repr__(self) -> str:
        shape = " × ".join(str(n) for n in getattr(self.source, "shape", ()))
        return f"Patch({self.hook_name}, positions={list(self.positions)}, source=[{shape}] (prompts × positions × d))"


def _jsonable_layers(layers):
    return None if layers is None else [int(l) for l in layers]


# ---------------------------------------------------------------------- short reprs
def _direction_text(direction) -> str:
    """``'refusal' (layer 9, |v|=0.751)`` or ``'persona' (per layer, 0..23)`` for reprs."""
    if isinstance(direction, LayerDirections):
        layers = direction.layers
        span = f"{layers[0]}..{layers[-1]}" if layers else "none"
        return f"{direction.name!r} (per layer, {span})"
    if isinstance(direction, Direction):
        return f"{direction.name!r} (layer {direction.layer}, |v|={direction.norm:.3g})"
    return repr(direction)


def _norm_at(direction, layer) -> float | None:
    """Norm of the vector an edit at ``layer`` uses (``None`` when unknown)."""
    if isinstance(direction, LayerDirections):
        if layer is None or layer not in direction.layers:
            return None
        return float(direction.vector_at(layer).norm())
    return float(direction.norm) if isinstance(direction, Direction) else None


def _layers_text(layers, default: str) -> str:
    if layers is None:
        return default
    ls = [int(l) for l in layers]
    if len(ls) > 4 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"{ls[0]}..{ls[-1]}"
    return str(ls)


def _transfer_text(allow_transfer: bool) -> str:
    return ", allow_transfer=True" if allow_transfer else ""


@contextlib.contextmanager
def apply(chat_model: "ChatModel", *interventions: Intervention) -> Iterator["ChatModel"]:
    """Apply interventions for the duration of a ``with`` block.

    Every intervention is validated before any hook is added. Hooks are added through
    TransformerLens' ``model.hooks(...)`` and removed when the block exits, whatever the
    reason (exception, ``KeyboardInterrupt``).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> d = Direction(vector=torch.randn(cm.d_model), layer=1, model_id=cm.model_id)
        >>> with apply(cm, Ablate(d)):
        ...     _ = cm.model(cm.tokenize(cm.format(["Hi"]))[0])
        >>> any(hp.fwd_hooks for hp in cm.model.hook_dict.values())
        False
    """
    hooks: list[tuple[str, HookFn]] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise ConfigError(f"apply() takes interventions, got {type(iv).__name__}")
        iv.validate(chat_model)
        hooks.extend(iv.hooks(chat_model))
    _check_stacked(interventions, chat_model)
    with chat_model.model.hooks(fwd_hooks=hooks):
        yield chat_model


@contextlib.contextmanager
def apply_conditions(chat_model: "ChatModel", conditions: Sequence[Sequence[Intervention]]) -> Iterator["ChatModel"]:
    """Apply a different set of interventions to different rows of the same batch.

    Row ``i`` of every activation belongs to condition ``chat_model._state.conditions[i]``
    (set by the batched runners from :attr:`Batch.conditions`); each condition's hooks
    edit only its own rows, in place. This lets one batch hold, say, the same prompts at
    six steering strengths — one forward pass instead of six, and far better use of the
    CPU for the skinny matrix products of generation. :class:`Patch` is not supported
    here (its cached rows are per prompt, not per condition).

    Example:
        >>> cm = load_chat_model("tiny")
        >>> d = Direction(vector=torch.randn(cm.d_model), layer=1, model_id=cm.model_id)
        >>> # generate_conditions builds the multi-condition batches and applies them with this function
        >>> base, ablated = generate_conditions(cm, ["Hi"], [[], [Ablate(d)]], max_new_tokens=4, progress=False)
        >>> len(base.texts), len(ablated.texts)
        (1, 1)
    """
    state = chat_model._state
    hooks: list[tuple[str, HookFn]] = []
    for c, interventions in enumerate(conditions):
        for iv in interventions:
            if not isinstance(iv, Intervention):
                raise ConfigError(f"apply_conditions() takes interventions, got {type(iv).__name__}")
            if isinstance(iv, Patch):
                raise ConfigError("Patch cannot be used in a multi-condition run")
            iv.validate(chat_model)
            for name, fn in iv.hooks(chat_model):
                hooks.append((name, for_condition(fn, c, state)))
        _check_stacked(interventions, chat_model)
    with chat_model.model.hooks(fwd_hooks=hooks):
        yield chat_model


def orthogonalize_weights(
    chat_model: "ChatModel", direction: "Direction", *, inplace: bool = False, allow_transfer: bool = False
) -> "ChatModel":
    """Project ``r̂`` out of every weight that writes to the residual stream.

    Edits the embedding (and positional embedding, if any), every attention output
    ``W_O``/``b_O`` and every MLP output ``W_out``/``b_out``: after it the residual stream
    never has a component along ``r̂``, exactly as with :class:`Ablate` at every layer on
    ``resid_pre``, ``attn_out`` and ``mlp_out`` — but with no hooks and no run-time cost.

    Returns:
        A new :class:`ChatModel` with edited weights (the original is untouched), or the
        same one edited in place with ``inplace=True``.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> d = Direction(vector=torch.randn(cm.d_model), layer=1, model_id=cm.model_id)
        >>> edited = orthogonalize_weights(cm, d)
        >>> hooked = last_logits(cm, ["Hi"], interventions=[Ablate(d)], progress=False)
        >>> torch.allclose(last_logits(edited, ["Hi"], progress=False), hooked, atol=1e-4)
        True
    """
    _check_direction(direction, chat_model, allow_transfer)
    target = chat_model
    if not inplace:  # a new ChatModel around a copy of the weights (tokenizer and conventions shared)
        target = dataclasses.replace(chat_model, model=copy.deepcopy(chat_model.model))
    m = target.model
    with torch.no_grad():
        r_hat = ops.unit(direction.vector.to(device=target.device, dtype=torch.float64))

        def out(w: Tensor) -> None:  # rows live in the residual stream (last dim = d_model)
            w64, r = w.to(torch.float64), r_hat.to(w.device)
            w.copy_(ops.project_out_unit(w64, r).to(w.dtype))

        out(m.embed.W_E)
        if hasattr(m, "pos_embed") and getattr(m.pos_embed, "W_pos", None) is not None and m.cfg.positional_embedding_type in ("standard", "shortformer"):
            out(m.pos_embed.W_pos)
        for block in m.blocks:
            out(block.attn.W_O)
            out(block.attn.b_O)
            if not m.cfg.attn_only:
                out(block.mlp.W_out)
                out(block.mlp.b_out)
    return target
