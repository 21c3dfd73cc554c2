"""The gating study's stages, one module each; importing this package registers them all.

Every module here registers one stage with :func:`persona_refusal.study.registry.register`;
modules are found automatically, so a new stage is one new file.
"""

from __future__ import annotations

import importlib

from persona_refusal.study.registry import stage_modules

__all__ = ["load_all"]


def load_all() -> list[str]:
    """Import every stage module of this package (idempotent); their names."""
    names = stage_modules(__path__)
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


