"""Studies and their stages, registered by name (in the spirit of SAELens's ``registry.py``).

Context
-------
A stage is one step of a study: a name, the stages whose results it reads
(``requires``), a function ``run(ctx) -> result`` and a result dataclass. The result's
fields are the ``results.json`` keys the stage writes (fields marked ``json=False`` stay in
memory for later stages: tensors, directions). A study is a loop over its registered
stages in dependency order; the CLI, the report and the figures are derived from the
registry, so adding a stage is one new file in :mod:`persona_refusal.study.gating.stages`::

    @dataclass
    class MyResult(StageResult):
        my_key: dict

    @register("my_stage", requires=("sweep_caches",), order=95)
    def run(ctx: StudyContext) -> MyResult:
        ...

Several studies share this machinery. Each is a :class:`StudyKind` (its name, the
``results.json`` schema it writes, its configuration and context classes, its results
class), registered with :func:`register_study`; its stages are registered under its name
(``register(..., study="refusal")``; the default is the persona-gating study,
``"gating"``), so two studies may each have a stage called ``refusal`` and the runner
(:mod:`persona_refusal.study.runner`) runs either without knowing which it is.
"""

from __future__ import annotations

import dataclasses
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from persona_refusal import results as _results
from persona_refusal.errors import ConfigError
from persona_refusal.storage import read_json, write_json

__all__ = ["StageResult", "Stage", "StudyKind", "register", "registered", "get_stage", "stage_order", "memory",
           "register_study", "randomness_record", "study_kind", "kind_of_config", "kind_of_schema", "studies", "GATING",
           "stage_modules"]

GATING = "gating"
"""The name of the persona-gating study (the default namespace of :func:`register`)."""


def memory(default: Any = None) -> Any:
    """A result field kept in memory only (not written to ``results.json``)."""
    return dataclasses.field(default=default, metadata={"json": False}, repr=False, compare=False)


@dataclass
class StageResult:
    """Base of the stages' results: JSON fields are ``results.json`` top-level keys."""

    @classmethod
    def json_fields(cls) -> list[str]:
        """The fields written to ``results.json``."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)]

    def to_json(self) -> dict:
        """The ``results.json`` keys this stage writes."""
        return {name: getattr(self, name) for name in self.json_fields()}

    @classmethod
    def from_json(cls, results: dict) -> "StageResult":
        """Read this stage's part of a ``results.json`` (memory-only fields are ``None``)."""
        missing = [k for k in cls.json_fields() if k not in results]
        if missing:
            raise ConfigError(f"these results hold no {', '.join(missing)} (the stage did not run)")
        return cls(**{k: results[k] for k in cls.json_fields()})

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` as canonical JSON, atomically."""
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "StageResult":
        """Read what :meth:`save` wrote."""
        return cls.from_json(read_json(path))


@dataclass(frozen=True)
class Stage:
    """One registered stage of the study."""

    name: str
    """Its name (checkpoints, timings and figures refer to it)."""
    run: Callable[[Any], StageResult]
    """``run(ctx) -> result``: computes (or resumes) the stage."""
    requires: tuple[str, ...]
    """Stages whose results it reads."""
    order: int
    """Where it runs among the stages whose inputs are ready (smaller first)."""
    doc: str
    """One line on what it measures (the first line of ``run``'s docstring)."""
    study: str = GATING
    """The study it belongs to (:attr:`StudyKind.name`)."""
    result: type[StageResult] | None = None
    """Its result dataclass (``run``'s return annotation), whose JSON fields are the
    ``results.json`` keys it writes (:meth:`persona_refusal.results.SummaryDict.stage`)."""


@dataclass(frozen=True)
class StudyKind:
    """One kind of study the runner can run: what it is called, what it writes, and the
    classes that hold its configuration, shared state and results.

    Example:
        >>> study_kind("gating").schema
        'persona_refusal.gating/1'
    """

    name: str
    """Its name: the namespace of its stages (``register(..., study=name)``) and figures."""
    schema: str
    """The ``schema`` string of the ``results.json`` it writes."""
    config: type
    """Its configuration class (sections of checked fields, presets, derived CLI flags)."""
    context: type
    """Its context class: built as ``context(chat_model, config, out, force=, progress=,
    judge=, prompts=)``; opens the run folder and holds what the stages share."""
    results: type
    """The ``dict`` subclass its results are returned as (a readable summary)."""
    randomness: Callable[[Any], dict]
    """``config -> dict``: every source of randomness of a run, for the ``results.json`` header."""
    title: str = ""
    """One line on what it measures (for ``--help`` and the report)."""
    readable: tuple[str, ...] = ()
    """Older schemas its results reader still accepts (besides :attr:`schema`)."""


_REGISTRY: dict[str, dict[str, Stage]] = {}
_STUDIES: dict[str, StudyKind] = {}


def randomness_record(cfg: Any, **seeds: int) -> dict:
    """A run's sources of randomness (the ``randomness`` header of ``results.json``): the seed,
    the bootstrap's seed and resamples, the study's other seeds (``seeds``), greedy decoding.

    Example:
        >>> from types import SimpleNamespace
        >>> randomness_record(SimpleNamespace(seed=0, bootstrap=200), null_seed=1)["null_seed"]
        1
    """
    return {"seed": cfg.seed, "bootstrap_seed": cfg.seed, "bootstrap_resamples": cfg.bootstrap, **seeds,
            "decoding": "greedy (no sampling)",
            "note": "nothing else is random; torch's thread count, which can change the last bits of CPU sums, is "
                    "in run_info"}


def register_study(kind: StudyKind) -> StudyKind:
    """Make a kind of study known to the runner (idempotent for the same kind)."""
    old = _STUDIES.get(kind.name)
    if old is not None and old != kind:
        raise ConfigError(f"a study named {kind.name!r} is already registered")
    _STUDIES[kind.name] = kind
    return kind


def studies() -> dict[str, StudyKind]:
    """Every registered kind of study, by name."""
    return dict(_STUDIES)


def study_kind(name: str) -> StudyKind:
    """A registered kind of study by name."""
    if name not in _STUDIES:
        raise ConfigError(f"unknown study {name!r}", hint=f"use one of {', '.join(sorted(_STUDIES))}")
    return _STUDIES[name]


def kind_of_config(config: Any) -> StudyKind:
    """The kind of study a configuration object belongs to (by its class)."""
    for kind in _STUDIES.values():
        if type(config) is kind.config:
            return kind
    raise ConfigError(f"{type(config).__name__} is not the configuration of a registered study",
                      hint=f"use one of {', '.join(k.config.__name__ for k in _STUDIES.values())}")


def kind_of_schema(schema: Any) -> StudyKind | None:
    """The kind of study whose results carry this ``schema`` string (``None``: no study's)."""
    for kind in _STUDIES.values():
        if schema == kind.schema or schema in kind.readable:
            return kind
    return None


def register(name: str, *, requires: Sequence[str] = (), order: int = 100, study: str = GATING) -> Callable:
    """Decorator: register ``run(ctx) -> StageResult`` as the stage ``name`` of ``study``."""

    def deco(fn: Callable) -> Callable:
        stages = _REGISTRY.setdefault(study, {})
        if name in stages and stages[name].run is not fn:
            raise ConfigError(f"a stage named {name!r} is already registered in the {study} study")
        doc = (fn.__doc__ or "").strip().splitlines()
        stages[name] = Stage(name, fn, tuple(requires), order, doc[0] if doc else "", study, _result_class(fn))
        _results.bind_registry(sys.modules[__name__])  # the typed results learn the new stage's keys
        return fn

    return deco


def _result_class(fn: Callable) -> type[StageResult] | None:
    """The :class:`StageResult` subclass ``fn`` is annotated to return (``None``: none)."""
    ann = inspect.signature(fn).return_annotation
    cls = inspect.unwrap(fn).__globals__.get(ann) if isinstance(ann, str) else ann  # unwrap: a decorated ``run``
    return cls if isinstance(cls, type) and issubclass(cls, StageResult) else None


def registered(study: str = GATING) -> dict[str, Stage]:
    """Every registered stage of ``study``, by name."""
    return dict(_REGISTRY.get(study, {}))


def get_stage(name: str, study: str = GATING) -> Stage:
    """A registered stage of ``study`` by name (one-line error naming the known ones)."""
    stages = _REGISTRY.get(study, {})
    if name not in stages:
        raise ConfigError(f"unknown stage {name!r}", hint=f"use one of {', '.join(sorted(stages))}")
    return stages[name]


def stage_order(names: Sequence[str] | None = None, study: str = GATING) -> list[Stage]:
    """The stages of ``study`` to run for ``names`` (default: all), with everything they
    require, in dependency order (ties: smaller ``order`` first)."""
    wanted: dict[str, Stage] = {}

    def add(n: str) -> None:
        if n in wanted:
            return
        st = get_stage(n, study)
        wanted[n] = st
        for r in st.requires:
            add(r)

    for n in (names if names is not None else list(_REGISTRY.get(study, {}))):
        add(n)
    done: list[Stage] = []
    pending = dict(wanted)
    while pending:
        ready = [s for s in pending.values() if all(r in {d.name for d in done} for r in s.requires)]
        if not ready:
            raise ConfigError(f"stages {sorted(pending)} require each other in a circle")
        nxt = min(ready, key=lambda s: (s.order, s.name))
        done.append(nxt)
        del pending[nxt.name]
    return done


def stage_modules(path: Sequence[str]) -> list[str]:
    """The names of the modules of a stages package (those not starting with ``_``): each
    registers one stage when imported, so the package's ``__init__`` imports them all.

    Example:
        >>> from persona_refusal.study.gating import stages
        >>> "gating" in stage_modules(stages.__path__)
        True
    """
    return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


_results.bind_registry(sys.modules[__name__])
