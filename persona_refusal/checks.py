"""Argument checks for the public API: one-line :class:`ConfigError` on a wrong-typed argument.

Every callable exported at the top level of :mod:`persona_refusal` is passed through
:func:`checked` when ``persona_refusal.__getattr__`` first resolves it. A call through the
package then checks each argument against the parameter's own annotation before the
function does any work, and a mismatch raises one line that names the function, the
parameter, what it expects and what it got::

    extract_directions: positive must be a sequence of strings (a PromptSet or a list), got str

Functions are wrapped with :func:`functools.wraps` (same name, docstring, signature and
``__wrapped__``); the package's own modules import the unwrapped functions, so studies pay
nothing. Exported classes are marked ``@checked`` where they are defined, so a class
behaves the same however it is imported, and keeps its identity (``isinstance`` works as
before): the arguments of ``Class(...)`` are checked against ``Class.__init__``, for calls
made from outside the package only.

What is checked: plain classes, ``None``, unions and ``X | None``, ``str``, ``int``,
``float``, ``bool``, ``Sequence[X]``/``list[X]``/``tuple[X, ...]`` (any sequence, a list or a
tuple alike; a ``str`` is not a sequence of strings here; the first few items are sampled), ``Mapping[K, V]``/``dict[K, V]``
(the first few items), ``Callable``, ``Literal`` and tensors, including jaxtyping's
``Float[Tensor, "n d_model"]`` (a tensor with that number of dimensions; named sizes must
agree between the arguments of one call). Numbers follow :func:`~persona_refusal.directions.as_integer`:
an ``int`` parameter takes Python and numpy integers and 0-d integer tensors, never a
``bool`` nor a ``float`` (also ``2.0``); a ``float`` parameter takes any real number (an
``int`` too) and 0-d tensors, never a ``bool``; a ``bool`` parameter takes ``True``/``False``
(and numpy booleans) only. Values and ranges (a layer beyond the model, a NaN strength) are
left to the functions' own checks.

What is skipped, never guessed: an annotation that cannot be resolved, or that holds a
construct not listed above (``Any``, type variables, protocols that are not runtime
checkable, ``Iterator``, …); a union is checked only when every member can be.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import sys
import types
import typing
from collections import abc
from typing import Any, Callable

from persona_refusal.errors import ConfigError

__all__ = ["checked", "check_arguments"]

SAMPLE = 3
"""How many items of a sequence or mapping argument are checked."""

_PACKAGE = __name__.rsplit(".", 1)[0]
_PASS_THROUGH = ("dataclasses", "copy", "jaxtyping", "beartype")

# Names that annotations use but the defining modules import only under TYPE_CHECKING: looked
# up among the modules already imported (a caller holding such an object has imported its
# module), never imported here.
_FALLBACK = {
    "ChatModel": "persona_refusal.models",
    "Intervention": "persona_refusal.interventions",
    "Direction": "persona_refusal.directions",
    "LayerDirections": "persona_refusal.directions",
    "DirectionGrid": "persona_refusal.directions",
    "PromptSet": "persona_refusal.prompts",
    "Personas": "persona_refusal.prompts",
    "BatchPlan": "persona_refusal.activations",
    "Judge": "persona_refusal.evaluation.judges",
    "Tensor": "torch",
}


class _Fallback(dict):
    """A namespace that finds the names of :data:`_FALLBACK` in :data:`sys.modules`; it
    notes each name it could not find in :attr:`missed`."""

    def __init__(self) -> None:
        super().__init__()
        self.missed: set[str] = set()

    def __missing__(self, name: str) -> Any:
        module = sys.modules.get(_FALLBACK.get(name, ""))
        if module is None or not hasattr(module, name):
            self.missed.add(name)
            raise KeyError(name)
        value = getattr(module, name)
        self[name] = value
        return value


def _article(text: str) -> str:
    return f"an {text}" if text[:1].lower() in "aeio" else f"a {text}"


def _got(value: Any) -> str:
    if value is None:
        return "None"
    shape = getattr(value, "shape", None)
    name = type(value).__name__
    if shape is not None and hasattr(value, "ndim"):
        return f"{name} of shape {tuple(shape)}"
    if isinstance(value, (bool, numbers.Number)):
        return f"{name} {value!r}"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("…" if len(value) > 40 else "")
    return name


def _is_zero_d(value: Any) -> bool:
    return getattr(value, "ndim", None) == 0 and hasattr(value, "dtype")


class _Check:
    """One annotation, compiled: :meth:`fails` gives ``None`` for a fitting value, else what it got."""

    expects: str = ""
    plural: str = ""

    def fails(self, value: Any, sizes: dict) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError


class _Instance(_Check):
    def __init__(self, cls: type, expects: str | None = None, plural: str | None = None) -> None:
        self.cls = cls
        self.expects = expects or _article(cls.__name__)
        self.plural = plural or f"{cls.__name__} objects"

    def fails(self, value, sizes):
        try:
            return None if isinstance(value, self.cls) else _got(value)
        except TypeError:  # e.g. a protocol that is not runtime checkable
            return None


class _NoneCheck(_Check):
    expects, plural = "None", "None"

    def fails(self, value, sizes):
        return None if value is None else _got(value)


class _Int(_Check):
    expects, plural = "an integer", "integers"

    def fails(self, value, sizes):
        if _is_zero_d(value):
            kind = getattr(value.dtype, "kind", None)  # numpy
            integer = kind in ("i", "u") if kind else not (value.is_floating_point() or value.is_complex()
                                                             or str(value.dtype) == "torch.bool")
            return None if integer else _got(value)
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return None if ok else _got(value)


class _Float(_Check):
    expects, plural = "a number", "numbers"

    def fails(self, value, sizes):
        if _is_zero_d(value):
            return None if "bool" not in str(value.dtype) else _got(value)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return None if ok else _got(value)


class _Bool(_Check):
    expects, plural = "True or False", "booleans"

    def fails(self, value, sizes):
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        return None if ok else _got(value)


class _Callable(_Check):
    expects, plural = "a callable", "callables"

    def fails(self, value, sizes):
        return None if callable(value) else _got(value)


class _Literal(_Check):
    def __init__(self, values: tuple) -> None:
        self.values = values
        self.expects = " or ".join(repr(v) for v in values)
        self.plural = self.expects

    def fails(self, value, sizes):
        return None if value in self.values else repr(value)


class _Tensor(_Check):
    def __init__(self, cls: type, dims: tuple | None = None) -> None:
        self.cls, self.dims = cls, dims  # dims: names (None for an unnamed size), or None for any
        if dims is None:
            self.expects, self.plural = "a tensor", "tensors"
        else:
            self.expects = f"a {len(dims)}-d tensor ({' '.join(d or '_' for d in dims)})" if dims else "a 0-d tensor"
            self.plural = f"{len(dims)}-d tensors"

    def fails(self, value, sizes):
        if not isinstance(value, self.cls):
            return _got(value)
        if self.dims is None:
            return None
        if value.ndim != len(self.dims):
            return _got(value)
        for name, size in zip(self.dims, value.shape):
            if name is not None and sizes.setdefault(name, size) != size:
                return f"{_got(value)}, but {name} is {sizes[name]} in another argument"
        return None


class _Union(_Check):
    def __init__(self, members: list[_Check]) -> None:
        # ``X | None``: "X or None"; the rest listed in order
        self.members = members
        self.expects = " or ".join(m.expects for m in members)
        self.plural = " or ".join(m.plural for m in members)

    def fails(self, value, sizes):
        gots = []
        for m in self.members:
            got = m.fails(value, dict(sizes))
            if got is None:
                m.fails(value, sizes)  # record the sizes of the member that fits
                return None
            gots.append(got)
        # the most telling: a container whose items do not fit, a tensor of another size
        return next((g for g in gots if " whose " in g or " in another argument" in g), _got(value))


class _Sequence(_Check):
    def __init__(self, item: _Check | None, kind: str = "sequence", prompts: bool = False) -> None:
        self.item = item
        if item is None:
            self.expects = _article(kind)
        elif isinstance(item, _Instance) and item.cls is str:
            # a ``Sequence[str]`` parameter is where the package takes prompts
            self.expects = f"{_article(kind)} of strings" + (" (a PromptSet or a list)" if prompts else "")
        else:
            self.expects = f"{_article(kind)} of {item.plural}"
        self.plural = f"{kind}s" if item is None else f"{kind}s of {item.plural}"

    def fails(self, value, sizes):
        if isinstance(value, (str, bytes, abc.Mapping)):
            return _got(value)
        if not isinstance(value, abc.Sequence) and not _sequence_like(value):
            return _got(value)
        if self.item is None:
            return None
        for i in range(min(len(value), SAMPLE)):
            got = self.item.fails(value[i], {})
            if got is not None:
                return f"{type(value).__name__} whose item {i} is {got}"
        return None


def _sequence_like(value: Any) -> bool:
    """An indexable, sized value that is not a set or an iterator: a numpy array, a pandas Series."""
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, abc.Set) \
        and getattr(value, "ndim", 1) == 1


class _Mapping(_Check):
    def __init__(self, key: _Check | None, val: _Check | None) -> None:
        self.key, self.val = key, val
        if key is None or val is None:
            self.expects = "a mapping (a dict)"
        else:
            self.expects = f"a mapping (a dict) of {key.plural} to {val.plural}"
        self.plural = "mappings"

    def fails(self, value, sizes):
        if not isinstance(value, abc.Mapping):
            return _got(value)
        if self.key is None or self.val is None:
            return None
        for i, (k, v) in enumerate(value.items()):
            if i >= SAMPLE:
                break
            got = self.key.fails(k, {}) or self.val.fails(v, {})
            if got is not None:
                return f"{type(value).__name__} whose entry {k!r} is {got}"
        return None


def _jaxtyping_dims(annotation: Any) -> tuple | None:
    """The dimension names of a jaxtyping ``Float[Tensor, "a b"]`` (``None`` for an unnamed
    size); raises ``TypeError`` for variadic dimensions (``*batch``, ``...``), which are not checked."""
    names = []
    for dim in annotation.dims:
        kind = type(dim).__name__
        if "Variadic" in kind or "Ellipsis" in kind or getattr(dim, "broadcastable", False):
            raise TypeError("variadic")
        if kind == "_NamedDim":
            names.append(dim.name)
        elif kind in ("_FixedDim", "_AnonymousDim", "_SymbolicDim"):
            names.append(None)
        else:
            raise TypeError(kind)
    return tuple(names)


def compile_annotation(annotation: Any) -> _Check | None:
    """The check for one resolved annotation, or ``None`` when it cannot be checked."""
    if annotation is type(None) or annotation is None:
        return _NoneCheck()
    if annotation is bool:
        return _Bool()
    if annotation is int:
        return _Int()
    if annotation is float:
        return _Float()
    if annotation is str:
        return _Instance(str, "a string", "strings")
    if annotation is os.PathLike:
        return _Instance(os.PathLike, "a path", "paths")
    if hasattr(annotation, "array_type") and hasattr(annotation, "dims"):  # jaxtyping
        try:
            return _Tensor(annotation.array_type, _jaxtyping_dims(annotation))
        except (TypeError, AttributeError):
            return _Tensor(annotation.array_type)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        members = [compile_annotation(a) for a in args]
        if any(m is None for m in members):
            return None
        members.sort(key=lambda m: isinstance(m, _NoneCheck))  # "… or None"
        return _Union(members)
    if origin is typing.Literal:
        return _Literal(args)
    if origin in (abc.Sequence, list, tuple, abc.MutableSequence):
        item = None
        if args and not (origin is tuple and (len(args) != 2 or args[1] is not Ellipsis)):
            item = compile_annotation(args[0])
            if item is None:
                return None
        if origin is tuple and not item:
            return None  # a fixed-length tuple
        return _Sequence(item, prompts=origin is abc.Sequence)  # a list or a tuple is accepted for any of them
    if origin in (abc.Mapping, dict, abc.MutableMapping):
        key, val = (compile_annotation(args[0]), compile_annotation(args[1])) if len(args) == 2 else (None, None)
        return _Mapping(key, val) if (key is None) == (val is None) or not args else None
    if origin is abc.Callable or annotation is abc.Callable or annotation is typing.Callable:
        return _Callable()
    if origin is type:
        return _Instance(type, "a class", "classes")
    if origin is not None:
        return None
    if inspect.isclass(annotation) and annotation is not typing.Any:
        if getattr(annotation, "_is_protocol", False) and not getattr(annotation, "_is_runtime_protocol", False):
            return None
        if annotation.__module__ == "torch" and annotation.__name__ == "Tensor":
            return _Tensor(annotation)
        if annotation.__module__ == "typing":
            return None
        return _Instance(annotation)
    return None


class _Annotated:
    """Holds one annotation, so that :func:`typing.get_type_hints` resolves it alone."""


def _resolve(fn: Callable, module: str) -> tuple[dict[str, Any], bool]:
    """``fn``'s parameter annotations, resolved against ``module`` (and :data:`_FALLBACK`),
    and whether every one was; one that cannot be resolved is left out."""
    globalns = getattr(sys.modules.get(module), "__dict__", {})
    localns = _Fallback()
    try:
        return typing.get_type_hints(fn, globalns=globalns, localns=localns), True
    except Exception:  # one name cannot be resolved: resolve the annotations one by one
        pass
    hints, complete = {}, True
    for name, ann in getattr(fn, "__annotations__", {}).items():
        holder = _Annotated()
        holder.__annotations__ = {name: ann}
        try:
            hints[name] = typing.get_type_hints(holder, globalns=globalns, localns=localns)[name]
        except Exception:
            complete = False
    return hints, complete and not localns.missed


def _plan(fn: Callable, owner: str, module: str, skip_first: bool) -> tuple[inspect.Signature, dict, bool]:
    """The signature of ``fn``, ``{parameter: check}`` for the parameters that can be checked,
    and whether every annotation was resolved (a plan that is not complete is made again on
    the next call, when the module that defines a name may have been imported)."""
    raw = inspect.unwrap(fn)
    signature = inspect.signature(raw)
    hints, complete = _resolve(raw, module)
    checks = {}
    for i, (name, param) in enumerate(signature.parameters.items()):
        if (skip_first and i == 0) or name not in hints:
            continue
        check = compile_annotation(hints[name])
        if check is not None:
            checks[name] = (param.kind, check)
    return signature, checks, complete


def _cached_plan(state: dict, fn: Callable, owner: str, module: str, skip_first: bool) -> tuple:
    """The plan of ``fn`` from ``state``, made on the first call and kept once complete."""
    if "plan" not in state:
        signature, checks, complete = _plan(fn, owner, module, skip_first)
        if not complete:
            return signature, checks
        state["plan"] = (signature, checks)
    return state["plan"]


def check_arguments(owner: str, signature: inspect.Signature, checks: dict, args: tuple, kwargs: dict) -> None:
    """Raise :class:`ConfigError` for the first argument that does not fit its annotation."""
    if not checks:
        return
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return  # a missing or unknown argument: the call itself says so
    sizes: dict = {}
    for name, value in bound.arguments.items():
        entry = checks.get(name)
        if entry is None:
            continue
        kind, check = entry
        if kind is inspect.Parameter.VAR_POSITIONAL:
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value[:8])]
        elif kind is inspect.Parameter.VAR_KEYWORD:
            items = [(k, v) for k, v in list(value.items())[:8]]
        else:
            items = [(name, value)]
        for label, v in items:
            got = check.fails(v, sizes)
            if got is not None:
                raise ConfigError(f"{owner}: {label} must be {check.expects}, got {got}")


def _from_package() -> bool:
    """Whether the code that called into this module is the package's own. Frames of this
    module, of wrappers around its functions (runtime type checkers) and of
    ``dataclasses.replace``/``copy.copy`` are passed over, whatever their number."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if not (name == __name__ or name.split(".")[0] in _PASS_THROUGH
                or frame.f_code.co_filename.startswith("<@beartype")):
            return name == _PACKAGE or name.startswith(_PACKAGE + ".")
        frame = frame.f_back
    return False


def _check_init(cls: type) -> None:
    """Check the arguments of ``cls(...)`` against ``cls.__init__`` (calls from outside the
    package only). The check sits in ``__new__``, which runs first and which runtime type
    checkers and dataclasses leave alone; ``__init__``, the class itself and
    ``isinstance`` stay as they are.

    Where the class checks its own arguments, its message is the more telling one: when an
    argument misfits its annotation, the class's own construction is tried first (on a
    throwaway instance) and a :class:`ConfigError` it raises is the one shown."""
    if "__new__" in cls.__dict__ and getattr(cls.__new__, "_persona_refusal_checked", False):
        return
    inherited = cls.__new__
    state: dict = {}

    def make(klass, args, kwargs):
        if inherited is object.__new__:
            return object.__new__(klass)
        return inherited(klass, *args, **kwargs)

    @functools.wraps(cls.__init__)
    def __new__(klass, *args, **kwargs):
        if klass is cls and (args or kwargs) and not _from_package():
            signature, checks = _cached_plan(state, cls.__init__, cls.__name__, cls.__module__, True)
            try:
                check_arguments(cls.__name__, signature, checks, (None, *args), kwargs)
            except ConfigError as misfit:
                try:
                    cls.__init__(make(klass, args, kwargs), *args, **kwargs)
                except ConfigError:
                    raise
                except Exception:
                    pass
                raise misfit from None
        return make(klass, args, kwargs)

    __new__._persona_refusal_checked = True
    cls.__new__ = staticmethod(__new__)


def checked(value: Any) -> Any:
    """``value`` with its arguments checked on every call: a function comes back wrapped,
    a class comes back itself with its ``__init__`` checked; anything else as it is."""
    if inspect.isclass(value):
        if not issubclass(value, BaseException) and not getattr(value, "_is_protocol", False):
            _check_init(value)
        return value
    if not (inspect.isfunction(value) or inspect.isfunction(inspect.unwrap(value))):
        return value
    if getattr(value, "_persona_refusal_checked", False):
        return value
    state: dict = {}
    owner = value.__name__

    @functools.wraps(value)
    def wrapper(*args, **kwargs):
        signature, checks = _cached_plan(state, value, owner, value.__module__, False)
        check_arguments(owner, signature, checks, args, kwargs)
        return value(*args, **kwargs)

    wrapper._persona_refusal_checked = True
    return wrapper
