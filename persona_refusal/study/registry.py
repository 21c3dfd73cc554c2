"""Stages of the study, registered by name (in the spirit of SAELens's ``registry.py``).

Context
-------
A stage is one step of the study: a name, the stages whose results it reads
(``requires``), a function ``run(ctx) -> result`` and a result dataclass. The result's
fields are the ``results.json`` keys the stage writes (fields marked ``json=False`` stay in
memory for later stages: tensors, directions). The study is a loop over the registered
stages in dependency order; the CLI, the report and the figures are derived from the
registry, so adding a stage is one new file in :mod:`persona_refusal.study.stages`::

    @dataclass
    class MyResult(StageResult):
        my_key: dict

    @register("my_stage", requires=("sweep_caches",), order=95)
    def run(ctx: StudyContext) -> MyResult:
        ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from persona_refusal.errors import ConfigError
from persona_refusal.storage import read_json, write_json

__all__ = ["StageResult", "Stage", "register", "registered", "get_stage", "stage_order", "memory"]


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


_REGISTRY: dict[str, Stage] = {}


def register(name: str, *, requires: Sequence[str] = (), order: int = 100) -> Callable:
    """Decorator: register ``run(ctx) -> StageResult`` as the stage ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ConfigError(f"a stage named {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Stage(name, fn, tuple(requires), order, doc[0] if doc else "")
        return fn

    return deco


def registered() -> dict[str, Stage]:
    """Every registered stage, by name."""
    return dict(_REGISTRY)


def get_stage(name: str) -> Stage:
    """A registered stage by name (one-line error naming the known ones)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown stage {name!r}", hint=f"use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def stage_order(names: Sequence[str] | None = None) -> list[Stage]:
    """The stages to run for ``names`` (default: all), with everything they require, in
    dependency order (ties: smaller ``order`` first)."""
    wanted: dict[str, Stage] = {}

    def add(n: str) -> None:
        if n in wanted:
            return
        st = get_stage(n)
        wanted[n] = st
        for r in st.requires:
            add(r)

    for n in (names if names is not None else list(_REGISTRY)):
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
