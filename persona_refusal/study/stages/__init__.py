"""The study's stages, one module each; importing this package registers them all.

Every module here registers one stage with :func:`persona_refusal.study.registry.register`;
modules are found automatically, so a new stage is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["load_all"]


def load_all() -> list[str]:
    """Import every stage module of this package (idempotent); their names."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


load_all()
