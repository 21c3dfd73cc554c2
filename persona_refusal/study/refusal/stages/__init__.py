"""The refusal study's stages, one module each; importing this package registers them all
(under the study name ``"refusal"``)."""

from __future__ import annotations

from persona_refusal.study.registry import load_modules

__all__ = ["load_all", "STUDY"]

STUDY = "refusal"
"""The registry namespace of these stages."""


def load_all() -> list[str]:
    """Import every stage module of this package (idempotent); their names."""
    return load_modules(__name__, __path__)
