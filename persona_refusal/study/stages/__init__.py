"""The gating study's stages, one module each; importing this package registers them all.

Every module here registers one stage with :func:`persona_refusal.study.registry.register`;
modules are found automatically, so a new stage is one new file.
"""

from __future__ import annotations

from persona_refusal.study.registry import load_modules

__all__ = ["load_all"]


def load_all() -> list[str]:
    """Import every stage module of this package (idempotent); their names."""
    return load_modules(__name__, __path__)


load_all()
