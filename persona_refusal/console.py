"""The ``persona-refusal`` console script: catches Ctrl-C from its first instruction.

The command line's own module (:mod:`persona_refusal.cli`) imports torch and the model
stack, which takes seconds; a Ctrl-C during those imports would otherwise end in a long
traceback. :func:`entry` starts before any of them (``import persona_refusal`` itself is
free: the package's names load when first used), so an interrupt at any moment prints one
line, ``interrupted``, and exits with code 130.
"""

from __future__ import annotations

import sys

__all__ = ["entry", "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130


def entry() -> None:
    """Console-script entry point: :func:`persona_refusal.cli.main`, with Ctrl-C caught
    from the first instruction (during imports, too).

    Example:
        >>> entry()        # doctest: +SKIP
    """
    try:
        from persona_refusal.cli import main

        code = main()
    except KeyboardInterrupt:
        _interrupted()
        return
    sys.exit(code)


def _interrupted() -> None:
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except BaseException:  # pragma: no cover (a second Ctrl-C while printing)
        pass
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    entry()
