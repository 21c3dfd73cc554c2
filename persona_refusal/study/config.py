"""What every study's configuration is made of: checked fields, sections, presets, flags.

Context
-------
A study's configuration is a :class:`SectionedConfig`: the top-level fields of
:data:`TOP_FIELDS` (model, seed, bootstrap, batch size) and one small :class:`ConfigSection`
dataclass per concern (:class:`ComputeConfig`, the device and dtype, is every study's).
Every field carries a :class:`Check` in its metadata — its kind, range and help text — and
that one table drives three things: validation (run before a model loads), the
command-line flags (:func:`add_flags`), and the error messages. Field names are unique
across sections, so a configuration is also addressed *flat*. The studies' own
configurations are :class:`persona_refusal.study.gating.StudyConfig` and
:class:`persona_refusal.study.refusal.RefusalConfig`; this module also holds the layer and
position specs (:func:`layer_spec`, :func:`position_spec`) and :func:`resolve_device`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from persona_refusal.decoding import DECODE_MODES
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import judge_name

__all__ = [
    "Check", "ComputeConfig", "Preset", "MAX_STRENGTH", "MAX_SEED", "DTYPES", "DEVICE_HELP", "DTYPE_HELP",
    "DECODE_HELP", "layer_spec", "add_flags", "flags_to_fields", "resolve_device", "position_spec", "SectionedConfig",
    "ConfigSection", "setting", "TOP_FIELDS", "JUDGE_CHECK", "canonical_judge",
]

MAX_STRENGTH = 100.0
"""Largest steering strength (persona ``α``, re-add ``β``) accepted, in units of the common
norm ``s``: the paper uses 2–3; far beyond 100 an added vector swamps the residual stream,
and a strength such as 1e30 overflows float32."""

MAX_SEED = 2**63 - 1
"""Largest seed: torch generators take 64-bit seeds."""

LAYER_SPEC_HELP = "all, every:N, from:N, below:F (comma-combined), or a list such as 0,4,8"

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""The dtypes a model can run in (weights and activations; directions and statistics stay
float32/float64 on the CPU whatever the model's dtype)."""

DEVICE_HELP = "where the model runs: auto (default: CUDA when available, else CPU), cpu, cuda, cuda:N or mps"
"""``--help`` line of every ``--device`` flag."""
DTYPE_HELP = "dtype of the model's weights and activations: " + ", ".join(DTYPES) + " (default float32)"
"""``--help`` line of every ``--dtype`` flag."""
DECODE_HELP = ("decoding steps of generation: packed (fastest on a CPU, a second copy of the weights), "
               "plain (no extra memory) or reference (TransformerLens' forward); default packed")
"""``--help`` line of every ``--decode`` flag."""

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# ============================================================================ field checks
@dataclass(frozen=True)
class Check:
    """How one configuration field is checked and offered on the command line."""

    kind: str
    """``int``, ``float``, ``bool``, ``str``, ``path``, ``choice``, ``strengths`` (a list of
    finite numbers within ±:data:`MAX_STRENGTH`), ``layers`` (a list of layers or a spec
    string), ``ints`` (a list of integers), ``positions`` (a list of negative ints) or
    ``judge`` (a judge name, :func:`persona_refusal.evaluation.judge_name`)."""
    help: str = ""
    """One line for ``--help``."""
    optional: bool = False
    """``None`` is allowed (it means "the default derived from the model")."""
    low: int | float | None = None
    """Smallest allowed value (numbers)."""
    high: int | float | None = None
    """Largest allowed value (numbers)."""
    choices: tuple = ()
    """Allowed values of a ``choice`` field."""
    flag: bool = True
    """Offered as a ``--flag`` on ``persona-refusal run``."""
    nonempty: bool = False
    """A list that must hold at least one value."""
    identity: bool = True
    """Part of a run's identity (:meth:`StudyConfig.identity`): a run folder resumes only
    with the same value. ``False`` for fields that say where a run computes, not what it
    computes (the device)."""

    def check(self, name: str, v: Any) -> None:
        """Raise :class:`ConfigError` (one line) if ``v`` is not a valid value of ``name``."""
        if v is None:
            if self.optional:
                return
            raise ConfigError(f"{name} must be set, got None")
        getattr(self, f"_check_{self.kind}")(name, v)

    def _range(self, name: str, v: Any, hint: str | None = None) -> None:
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            if self.high is None:
                raise ConfigError(f"{name} must be at least {self.low:g}, got {v}")
            raise ConfigError(f"{name} {v!r} is out of range", hint=hint or f"use a value between {self.low:g} and {self.high:g}")

    def _check_int(self, name: str, v: Any) -> None:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ConfigError(f"{name} must be an integer, got {v!r}", hint="use a whole number")
        self._range(name, v)

    def _check_float(self, name: str, v: Any) -> None:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise ConfigError(f"{name} must be a number, got {v!r}", hint="use a number such as 0.1")
        if not math.isfinite(v) and not (self.high is None and v == math.inf):
            raise ConfigError(f"{name} must be finite, got {v}", hint="use a finite number")
        self._range(name, v, hint=f"use a strength between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}"
                    if self.high == MAX_STRENGTH else None)

    def _check_bool(self, name: str, v: Any) -> None:
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")

    def _check_str(self, name: str, v: Any) -> None:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{name} must be a non-empty string, got {v!r}")

    _check_path = _check_str

    def _check_choice(self, name: str, v: Any) -> None:
        if v not in self.choices:
            raise ConfigError(f"unknown {name} {v!r}", hint=f"use {', '.join(map(str, self.choices))}")

    def _check_strengths(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{name} must be a list of strengths, got {v!r}", hint="write it as a list, e.g. [1.0, 2.0]")
        if self.nonempty and not v:
            raise ConfigError(f"{name} must hold at least one strength")
        for x in v:
            if not isinstance(x, numbers.Real) or isinstance(x, bool) or not math.isfinite(x):
                raise ConfigError(f"{name} holds a non-finite strength {x!r}", hint="use finite numbers")
            if abs(x) > MAX_STRENGTH:
                raise ConfigError(f"{name} holds the strength {x!r}, out of range",
                                  hint=f"use strengths between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}")

    def _check_ints(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{name} must be a list of integers, got {v!r}", hint="write it as a list, e.g. [0, 4, 8]")

    def _check_strs(self, name: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ConfigError(f"{name} must be a list of non-empty strings, got {v!r}",
                              hint='write it as a list, e.g. ["character", "scripted"]')

    def _check_layers(self, name: str, v: Any) -> None:
        if isinstance(v, str):
            layer_spec(name, v, 1)  # the syntax; ranges are checked once the model's depth is known
            return
        self._check_ints(name, v)
        layer_spec(name, v, 1)  # a negative layer fails now, as in a spec

    def _check_cells(self, name: str, v: Any) -> None:
        if not isinstance(v, dict) or not v:
            raise ConfigError(f"{name} must map cell names to lists of layers, got {v!r}",
                              hint='write it as {"late": [20], "paired": [20, 22]} or late=20,paired=20+22')
        for cell, layers in v.items():
            if not isinstance(cell, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", cell):
                raise ConfigError(f"{name}: bad cell name {cell!r}", hint="use letters, digits, _ and -")
            self._check_ints(f"{name}[{cell!r}]", layers)
            if not layers:
                raise ConfigError(f"{name}[{cell!r}] holds no layer")

    def _check_device(self, name: str, v: Any) -> None:
        # the spelling only: whether this machine has the device is checked when the model loads (resolve_device)
        if not isinstance(v, str) or not _DEVICE_RE.fullmatch(v):
            raise ConfigError(f"unknown {name} {v!r}", hint="use auto, cpu, cuda, cuda:N or mps")

    def _check_judge(self, name: str, v: Any) -> None:
        judge_name(v)  # strict, keyword, lenient, model or model:NAME; a one-line error otherwise

    def _check_position_spec(self, name: str, v: Any) -> None:
        if isinstance(v, str):
            position_spec(name, v, [-1])  # the syntax; ranges are checked once the model is known
            return
        self._check_positions(name, v)

    def _check_count_or_all(self, name: str, v: Any) -> None:
        if v == "all":
            return
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ConfigError(f"{name} must be a whole number or 'all', got {v!r}", hint="use e.g. 12, or all")
        self._range(name, v)

    def _check_choices(self, name: str, v: Any) -> None:
        self._check_strs(name, v)
        bad = [x for x in v if x not in self.choices]
        if bad:
            raise ConfigError(f"unknown {name} {bad[0]!r}", hint=f"use {', '.join(map(str, self.choices))}")

    def _check_positions(self, name: str, v: Any) -> None:
        self._check_ints(name, v)
        if not v:
            raise ConfigError(f"{name} must hold at least one position")
        for p in v:
            if p >= 0:
                raise ConfigError(f"selection positions count from the end and must be negative, got {p}")


def setting(default: Any, check: Check, *, factory: bool = False) -> Any:
    """A dataclass field with its :class:`Check` in the metadata."""
    if factory:
        return field(default_factory=lambda: list(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


class ConfigSection:
    """Shared behaviour of the config sections: validation, dict round trip."""

    SECTION: ClassVar[str] = ""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["check"].check(f.name, getattr(self, f.name))

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))


JUDGE_CHECK = Check("judge", "the judge of headline rates: strict (alias keyword), lenient, model (= model:demo-1.5b) "
                            "or model:NAME (a model name or path)")
"""The check of every study's ``judge`` field."""


def canonical_judge(section: Any) -> None:
    """Store a section's ``judge`` in its canonical form (``keyword`` → ``strict``, ``model``
    → ``model:demo-1.5b``), so that one judge is one run identity; a bad name is left to
    ``validate()``, which says why."""
    if isinstance(section.judge, str):
        try:
            section.judge = judge_name(section.judge)
        except ConfigError:
            pass

# ============================================================================ the shared section
@dataclass
class ComputeConfig(ConfigSection):
    """Where the model runs, and in which dtype."""

    SECTION: ClassVar[str] = "compute"
    device: str = setting("auto", Check("device", DEVICE_HELP, identity=False))
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` (see :func:`resolve_device`). Not part of the run's identity: a run started on
    one device resumes on another; ``results.json`` records the device used in ``run_info``."""
    dtype: str = setting("float32", Check("choice", DTYPE_HELP, choices=DTYPES))
    """The model's dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``. Part of the run's
    identity (it changes the numbers): a run resumes only in the dtype it started in.
    Directions, cached residuals and statistics are float32/float64 on the CPU in every dtype."""
    decode: str = setting("packed", Check("choice", DECODE_HELP, choices=DECODE_MODES, identity=False))
    """How generation runs its decoding steps: ``"packed"`` (fastest on a CPU; a reordered
    second copy of the weight matrices), ``"plain"`` (the same path, no extra memory) or
    ``"reference"`` (TransformerLens' forward); see :mod:`persona_refusal.decoding`. The
    modes agree up to float rounding, so it is not part of the run's identity (like the
    device); ``results.json`` records it in ``run_info``."""

TOP_FIELDS: dict[str, tuple[Any, Check]] = {
    "model": ("demo", Check("str", "demo (default), demo-1.5b, tiny, a .gguf file, a HF folder or a hub name")),
    # Not part of the identity record: a given template is in the model's fingerprint instead
    # (ChatModel.fingerprint), which every run folder checks, so earlier run folders keep resuming.
    "chat_template": (None, Check("path", "a Jinja chat template file, for a model without one (a base model)",
                                  optional=True, identity=False)),
    "bootstrap": (2000, Check("int", "bootstrap resamples of every bootstrap interval", low=1)),
    "seed": (0, Check("int", "seed of every random draw", low=0, high=MAX_SEED)),
    "batch_size": (None, Check("int", "prompts per forward batch (default: by token budget)", optional=True, low=1)),
}
"""The top-level fields every study's configuration has: ``name -> (default, check)``."""

# ============================================================================ presets
@dataclass(frozen=True)
class Preset:
    """A named study: which stages run, and the configuration fields it changes."""

    overrides: dict
    """Flat configuration fields the preset sets."""
    stages: tuple[str, ...] | None = None
    """Stages it runs (``None``: every registered stage)."""
    doc: str = ""
    """One line for ``--help``."""

# ============================================================================ sectioned configurations
class SectionedConfig:
    """The shape every study's configuration shares: the top-level fields of
    :data:`TOP_FIELDS`, then one :class:`ConfigSection` dataclass per concern (class attribute
    ``SECTIONS``), with field names unique across sections so they can be given and read
    flat; named presets (``PRESETS``). A subclass only lists its sections and presets;
    construction, validation, the flat and nested records, the identity of a run and the
    derived CLI flags (:func:`add_flags`) come from here.
    """

    SECTIONS: ClassVar[tuple[type[ConfigSection], ...]] = ()
    """The sections, in the order of the nested record."""
    PRESETS: ClassVar[dict[str, Preset]] = {}
    """Named presets: flat overrides and the stages they run."""
    LEGACY: ClassVar[dict[str, Any]] = {}
    """Fields whose default changed: ``name -> the value a record without the field meant``
    (:meth:`from_dict` reads an older record as the protocol it was made with)."""
    _FIELD_SECTION: ClassVar[dict[str, str]] = {}
    _SECTION_CLASS: ClassVar[dict[str, type[ConfigSection]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._FIELD_SECTION = {f.name: s.SECTION for s in cls.SECTIONS for f in dataclasses.fields(s)}
        cls._SECTION_CLASS = {s.SECTION: s for s in cls.SECTIONS}
        clash = set(cls._FIELD_SECTION) & set(TOP_FIELDS)
        if len(cls._FIELD_SECTION) != sum(len(dataclasses.fields(s)) for s in cls.SECTIONS) or clash:
            raise TypeError(f"{cls.__name__}: field names must be unique across sections and the top level")

    def __init__(self, **fields: Any) -> None:
        top = {name: fields.pop(name, default) for name, (default, _) in TOP_FIELDS.items()}
        for name, value in top.items():
            object.__setattr__(self, name, value)
        given: dict[str, dict] = {s.SECTION: {} for s in self.SECTIONS}
        for key, value in fields.items():
            if key in self._SECTION_CLASS:
                cls = self._SECTION_CLASS[key]
                if isinstance(value, cls):
                    value = value.to_dict()
                if not isinstance(value, dict):
                    raise ConfigError(f"section {key} must be a {cls.__name__} or a dict, got {value!r}")
                for k, v in value.items():
                    if k in self._FIELD_SECTION and self._FIELD_SECTION[k] != key:
                        raise ConfigError(f"{k} is not a field of section {key}",
                                          hint=f"it belongs to section {self._FIELD_SECTION[k]}, or give it flat")
                    if k not in self._FIELD_SECTION:
                        raise self._unknown(k)
                    given[key][k] = v
            elif key in self._FIELD_SECTION:
                given[self._FIELD_SECTION[key]][key] = value
            else:
                raise self._unknown(key)
        for s in self.SECTIONS:
            setattr(self, s.SECTION, s(**given[s.SECTION]))
        self.validate()

    def __getattr__(self, name: str) -> Any:  # flat reads: cfg.persona_alpha
        section = type(self)._FIELD_SECTION.get(name)
        if section is None or section not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        return getattr(self.__dict__[section], name)

    def __setattr__(self, name: str, value: Any) -> None:
        section = type(self)._FIELD_SECTION.get(name)
        if section is not None and section in self.__dict__:
            setattr(self.__dict__[section], name, value)
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    @classmethod
    def _unknown(cls, name: str) -> ConfigError:
        close = difflib.get_close_matches(name, cls.field_names(), n=1)
        return ConfigError(f"unknown configuration field {name!r}",
                           hint=(f"did you mean {close[0]!r}? " if close else "") + f"see the {cls.__name__} fields "
                           f"in {cls.__module__}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named preset with overrides (flat names)."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown preset {name!r}", hint=f"use one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name].overrides, **overrides})

    @classmethod
    def from_dict(cls, d: dict):
        """Read :meth:`to_dict` (nested) or :meth:`to_flat` (flat, as stored in results)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(d).__name__}")
        legacy = {}
        for name, value in cls.LEGACY.items():  # a record made before the field existed meant its old behaviour
            section = cls._FIELD_SECTION.get(name)
            if name not in d and not (isinstance(d.get(section), dict) and name in d[section]):
                legacy[name] = value
        if legacy and not any(isinstance(d.get(s.SECTION), dict) for s in cls.SECTIONS):
            return cls(**{**legacy, **d})
        nested = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
        for name, value in legacy.items():
            nested.setdefault(cls._FIELD_SECTION[name], {})[name] = value
        return cls(**nested)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every flat field name, top-level ones first."""
        return list(TOP_FIELDS) + list(cls._FIELD_SECTION)

    @classmethod
    def check_of(cls, name: str) -> Check:
        """The :class:`Check` of a flat field."""
        if name in TOP_FIELDS:
            return TOP_FIELDS[name][1]
        section = cls._SECTION_CLASS[cls._FIELD_SECTION[name]]
        return {f.name: f for f in dataclasses.fields(section)}[name].metadata["check"]

    # ---------------------------------------------------------------- checks and records
    def validate(self) -> None:
        """Type and range checks of every field (layer ranges wait for the model: ``resolve``)."""
        for name, (_, check) in TOP_FIELDS.items():
            check.check(name, getattr(self, name))
        for s in self.SECTIONS:
            getattr(self, s.SECTION).validate()

    def to_dict(self) -> dict:
        """Nested JSON-able form: top-level fields, then one dict per section."""
        return {**{k: getattr(self, k) for k in TOP_FIELDS},
                **{s.SECTION: getattr(self, s.SECTION).to_dict() for s in self.SECTIONS}}

    def to_flat(self) -> dict:
        """Flat JSON-able form of every field."""
        return _plain({name: getattr(self, name) for name in self.field_names()})

    def identity(self) -> dict:
        """The flat record that identifies a run: :meth:`to_flat` without the fields whose
        :class:`Check` has ``identity=False`` (the device). It is the ``config`` record of
        run folders and ``results.json``; a folder resumes only a run with the same one.

        Example:
            >>> from persona_refusal.study import StudyConfig
            >>> a, b = StudyConfig(device="cpu"), StudyConfig(device="cuda")
            >>> a.identity() == b.identity(), "device" in a.identity()
            (True, False)
            >>> StudyConfig(dtype="bfloat16").identity() == a.identity()
            False
        """
        return {k: v for k, v in self.to_flat().items() if self.check_of(k).identity}

    def __repr__(self) -> str:
        default = type(self)().to_flat()
        changed = {k: v for k, v in self.to_flat().items() if default.get(k) != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

_NEGATIVE_LAYER = ("layers are numbered from 0 in every layer flag and spec (a list, from:N); negative numbers do "
                   "not count from the end: use 0..L-1")


def layer_spec(name: str, spec: Any, n_layers: int, default: str | None = None) -> list[int]:
    """Resolve a layer list or a spec string (``all``, ``every:N``, ``from:N``, ``below:F``).

    Example:
        >>> layer_spec("gating_layers", "every:4,from:8", 24)
        [8, 12, 16, 20]
    """
    if spec is None:
        spec = default
    if not isinstance(spec, str):
        negative = [l for l in spec if isinstance(l, int) and l < 0]
        if negative:
            raise ConfigError(f"{name} {negative}: a negative number is never a layer", hint=_NEGATIVE_LAYER)
        return [int(l) for l in spec]
    layers = list(range(n_layers))
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kind, _, arg = part.partition(":")
        try:
            if kind == "all" and not arg:
                continue
            if kind == "every":
                step = int(arg)
                if step < 1:
                    raise ConfigError(f"{name}: every:{arg} needs a step of at least 1", hint="use every:N with N >= 1")
                layers = [l for l in layers if l % step == 0]
            elif kind == "from":
                if int(arg) < 0:
                    raise ConfigError(f"{name}: from:{arg} names a negative layer", hint=_NEGATIVE_LAYER)
                layers = [l for l in layers if l >= int(arg)]
            elif kind == "below":
                frac = float(arg)
                if not math.isfinite(frac):
                    raise ValueError(arg)
                if frac < 0:
                    raise ConfigError(f"{name}: below:{arg} is a negative fraction of the depth",
                                      hint="use below:F with F between 0 and 1, e.g. below:0.8")
                layers = [l for l in layers if l < frac * n_layers]
            else:
                raise ValueError(kind)
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(f"{name}: cannot read layer spec {part!r}", hint=f"use {LAYER_SPEC_HELP}") from None
    return layers


POSITION_SPEC_HELP = "all (every post-instruction position), last:N, or a list such as -3,-2,-1 (write --flag=-1)"


def position_spec(name: str, spec: Any, allowed: Sequence[int]) -> list[int]:
    """Resolve a position list or spec (``all``, ``last:N``) against the positions a model
    allows (its post-instruction positions, e.g. ``[-5, …, -1]``), checking the range.

    Example:
        >>> position_spec("front_positions", "last:2", [-5, -4, -3, -2, -1])
        [-2, -1]
    """
    allowed = sorted(allowed)
    if spec is None or spec == "all":
        return allowed
    if isinstance(spec, str):
        kind, _, arg = spec.strip().partition(":")
        try:
            if kind != "last":
                raise ValueError(kind)
            n = int(arg)
        except ValueError:
            raise ConfigError(f"{name}: cannot read position spec {spec!r}", hint=f"use {POSITION_SPEC_HELP}") from None
        if not 1 <= n:
            raise ConfigError(f"{name}: last:{arg} needs at least 1 position", hint="use last:N with N >= 1")
        return allowed[-n:]
    out = sorted({int(p) for p in spec})
    bad = [p for p in out if p not in allowed]
    if bad:
        raise ConfigError(f"{name} position {bad[0]} is out of range: this model's post-instruction positions are "
                          f"{allowed[0]}..{allowed[-1]}", hint=f"use positions between {allowed[0]} and -1")
    return out


def resolve_device(device: str | None) -> str:
    """The torch device a model is loaded on: ``"auto"`` (or ``None``) is ``"cuda"`` when
    CUDA is available, else ``"cpu"``; a device this machine does not have is a one-line
    :class:`ConfigError` (checked before a model loads, instead of a torch traceback).

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("auto") in ("cuda", "cpu")
        True
    """
    device = "auto" if device is None else device
    Check("device").check("device", device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available: torch {torch.__version__} finds no CUDA GPU on "
                              "this machine", hint="use --device cpu, or auto: CUDA when there is one, else the CPU")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(f"device {device!r} is not available: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''}", hint=f"use cuda:0..cuda:{count - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine",
                          hint="use --device cpu, or auto: CUDA when there is one, else the CPU")
    return device


# ============================================================================ command line
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _layers(text: str):
    if any(c.isalpha() for c in text):
        return text  # a spec such as "all", "every:2", "from:12"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layers or a spec, got {text!r}") from None


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _positions(text: str):
    if any(c.isalpha() for c in text):
        return text  # a spec such as "all", "last:3"
    return _ints(text)


def _count_or_all(text: str):
    if text.strip() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or all, got {text!r}") from None


def _cells(text: str) -> dict[str, list[int]]:
    """``late=20,paired=20+22`` → ``{"late": [20], "paired": [20, 22]}``."""
    out: dict[str, list[int]] = {}
    for part in _strs(text):
        name, eq, layers = part.partition("=")
        try:
            if not eq:
                raise ValueError(part)
            out[name.strip()] = [int(x) for x in layers.split("+") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=LAYER[+LAYER…] cells such as late=20,paired=20+22, "
                                             f"got {part!r}") from None
    return out


_ARG_TYPES = {"int": int, "float": float, "strengths": _floats, "ints": _ints, "layers": _layers, "positions": _ints,
              "position_spec": _positions, "count_or_all": _count_or_all, "choices": _strs, "strs": _strs, "cells": _cells, "str": str, "device": str, "judge": str}


def add_flags(parser: argparse.ArgumentParser, config: type[SectionedConfig]) -> None:
    """One ``--flag`` per field of ``config`` (``persona_alpha`` → ``--persona-alpha``),
    derived from the fields' :class:`Check`; every flag defaults to ``None`` (not given)."""
    for name in config.field_names():
        check = config.check_of(name)
        if not check.flag:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = check.help + (f" ({LAYER_SPEC_HELP})" if check.kind == "layers" else
                                  f" ({POSITION_SPEC_HELP})" if check.kind == "position_spec" else "")
        if check.kind == "bool":
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        elif check.kind == "choice":
            parser.add_argument(flag, dest=name, choices=list(check.choices), help=help_text)
        elif check.kind == "path":
            parser.add_argument(flag, dest=name, metavar="PATH", help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=_ARG_TYPES.get(check.kind), help=help_text)


def flags_to_fields(args: argparse.Namespace, config: type[SectionedConfig]) -> dict:
    """The fields of ``config`` given as flags (those not ``None``)."""
    out = {}
    for name in config.field_names():
        v = getattr(args, name, None)
        if v is not None:
            out[name] = v
    return out
