"""hooks: the run state the batched runners set and hooks read, and the per-condition
hook wrapper of multi-condition runs."""

from __future__ import annotations

import pytest
import torch

from persona_refusal.errors import ConfigError
from persona_refusal.hooks import RunState, for_condition


def test_run_state_use_restores_the_previous_state_also_after_an_error():
    state = RunState()
    rows, conditions = torch.tensor([2, 0]), torch.tensor([1, 1])
    assert state.at_prompt_positions
    with pytest.raises(RuntimeError):
        with state.use("decode", rows, conditions):
            assert (state.phase, state.rows, state.conditions) == ("decode", rows, conditions)
            assert not state.at_prompt_positions
            with state.use("suffix"):
                assert state.at_prompt_positions and state.rows is None
            assert state.phase == "decode"
            raise RuntimeError
    assert (state.phase, state.rows, state.conditions) == ("full", None, None)


def test_for_condition_edits_only_its_rows():
    state = RunState()
    calls = []

    def plus_one(act, hook):
        calls.append(act.shape[0])
        return act + 1

    hook = for_condition(plus_one, 1, state)
    with pytest.raises(ConfigError, match="outside a multi-condition batch"):
        hook(torch.zeros(2, 3), hook=None)
    with state.use("full", conditions=torch.tensor([0, 1, 0, 1])):
        out = hook(torch.zeros(4, 3), hook=None)
    assert out[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0] and calls == [2]  # only the two rows of condition 1
    with state.use("full", conditions=torch.tensor([1, 1])):
        assert torch.equal(hook(torch.zeros(2, 3), hook=None), torch.ones(2, 3)) and calls == [2, 2]
    with state.use("full", conditions=torch.tensor([0, 0])):
        x = torch.zeros(2, 3)
        assert hook(x, hook=None) is x and calls == [2, 2]  # no row of condition 1: untouched, fn not called
