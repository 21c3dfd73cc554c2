"""The run state hooks read, and the hook wrappers shared by models and interventions.

Context
-------
A TransformerLens forward hook is a plain ``fn(act, hook) -> act`` on a named hook point.
Some edits need to know more than the activation: which prompts are in the batch (a
:class:`~persona_refusal.interventions.Patch` takes each prompt's cached row), which
phase of a batched run is in flight (a shared prefix, the per-prompt suffix, or generated
tokens), and — in a multi-condition run — which condition each row of the batch belongs
to. :class:`RunState` holds that; every :class:`~persona_refusal.models.ChatModel` owns
one, the batched runners set it, and the hooks read it.

This module sits below both :mod:`persona_refusal.interventions` (which builds hooks) and
:mod:`persona_refusal.models` (whose ``ChatModel`` owns the state), so neither imports
the other for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from persona_refusal.errors import ConfigError

__all__ = ["HookFn", "RunState", "for_condition", "POSITION_PHASES"]

HookFn = Callable[..., Tensor]
"""A TransformerLens forward hook: ``fn(act, hook=hook_point)`` returns the activation."""

POSITION_PHASES: tuple[str, ...] = ("full", "suffix")
"""Phases in which positions counted from the end of the prompt exist."""


@dataclass
class RunState:
    """What the forward pass in progress is doing, for hooks that act on positions.

    ``phase`` is ``"full"`` (a whole prompt, the default), ``"prefix"`` (a shared prompt
    prefix run once for a batch), ``"suffix"`` (the rest of each prompt) or ``"decode"``
    (generated tokens). ``rows`` holds the indices of the current batch's prompts.
    Position-specific edits apply only in the ``full`` and ``suffix`` phases, where
    positions counted from the end of the prompt exist.

    Example:
        >>> state = RunState()
        >>> with state.use("decode"):
        ...     state.phase
        'decode'
        >>> state.phase
        'full'
    """

    phase: str = "full"
    """``full``, ``prefix``, ``suffix`` or ``decode``."""
    rows: Tensor | None = None
    """Indices (into the prompt set) of the rows of the activations in flight."""
    conditions: Tensor | None = None
    """Condition of each row of the activations in flight (multi-condition runs)."""
    _rows_of: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _rows: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @contextlib.contextmanager
    def use(self, phase: str, rows: Tensor | None = None, conditions: Tensor | None = None) -> Iterator[None]:
        """Set the phase, rows and conditions for the duration of a ``with`` block."""
        old = (self.phase, self.rows, self.conditions)
        self.phase, self.rows, self.conditions = phase, rows, conditions
        try:
            yield
        finally:
            self.phase, self.rows, self.conditions = old

    @property
    def at_prompt_positions(self) -> bool:
        """Whether positions counted from the end of the prompt exist in this phase."""
        return self.phase in POSITION_PHASES

    def condition_rows(self, c: int, device: torch.device) -> Tensor | bool:
        """The rows of condition ``c`` in the batch in flight: ``True`` (every row),
        ``False`` (none) or their indices on ``device``.

        Worked out once per ``conditions`` tensor, condition and device, not once per hook
        call: on a GPU, deciding "all rows / no row / some rows" reads a value back to the
        host, and every hook of every layer asks the same question within one forward pass.

        Raises:
            ConfigError: ``conditions`` is unset (not a multi-condition batch).

        Example:
            >>> state = RunState(conditions=torch.tensor([0, 1, 1]))
            >>> state.condition_rows(1, torch.device("cpu")), state.condition_rows(2, torch.device("cpu"))
            (tensor([1, 2]), False)
        """
        cond = self.conditions
        if cond is None:
            raise ConfigError("a multi-condition hook ran outside a multi-condition batch")
        if self._rows_of is not cond:  # another batch or decoding step: forget the rows worked out before
            self._rows_of, self._rows = cond, {}
        key = (int(c), str(device))
        if key not in self._rows:
            sel = cond == c  # where the runner keeps the conditions (the CPU): no wait for the GPU
            if bool(sel.all()):
                self._rows[key] = True
            elif not bool(sel.any()):
                self._rows[key] = False
            else:
                self._rows[key] = sel.nonzero().flatten().to(device)
        return self._rows[key]


def for_condition(fn: HookFn, c: int, state: RunState) -> HookFn:
    """``fn``, restricted to the rows of the batch that belong to condition ``c``.

    The rows of other conditions pass through untouched; the selected rows are edited in
    place (``act[idx] = fn(act[idx])``), or ``fn`` sees the whole activation when every
    row is of condition ``c``.

    Raises:
        ConfigError: the hook runs while ``state.conditions`` is unset.

    Example:
        >>> import torch
        >>> state = RunState(conditions=torch.tensor([0, 1]))
        >>> hook = for_condition(lambda act, hook: act + 1, 1, state)
        >>> hook(torch.zeros(2, 3), hook=None)
        tensor([[0., 0., 0.],
                [1., 1., 1.]])
    """

    def hook(act, hook):
        idx = state.condition_rows(c, act.device)
        if idx is True:
            return fn(act, hook=hook)
        if idx is False:
            return act
        act[idx] = fn(act[idx], hook=hook)
        return act

    return hook
