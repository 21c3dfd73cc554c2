"""The refusal study's stages, one module each; importing this package registers them all
(under the study name ``"refusal"``)."""

from __future__ import annotations

import importlib

from persona_refusal.study.registry import stage_modules

__all__ = ["load_all", "STUDY"]

STUDY = "refusal"
"""The registry namespace of these stages."""


def load_all() -> list[str]:
    """Import every stage module of this package (idempotent); their names."""
    names = stage_modules(__path__)
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names
