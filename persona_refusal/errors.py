"""Errors that persona_refusal raises on bad input.

Every error here carries a one-line message that names the problem and, where there is
one, the fix. The CLI prints ``error: <message>`` and exits with a non-zero code instead
of a traceback. All of them subclass :class:`ValueError`, so code written against plain
``ValueError`` keeps working.
"""

from __future__ import annotations


class PersonaRefusalError(ValueError):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = " ".join(str(message).split())
        if hint:
            message = f"{message} ({' '.join(hint.split())})"
        super().__init__(message)


class ModelLoadError(PersonaRefusalError):
    """The model could not be found, read or converted."""


class ChecksumError(ModelLoadError):
    """A downloaded or cached file does not have the expected sha256."""


class PromptLoadError(PersonaRefusalError):
    """A prompt file is missing, unreadable, empty or in an unknown format."""


class DirectionMismatchError(PersonaRefusalError):
    """A direction does not belong to the model it is used with."""


class ConfigError(PersonaRefusalError):
    """A layer, position, strength or other setting is out of range."""


class RunFolderError(PersonaRefusalError):
    """An output folder holds a run made with a different configuration."""
