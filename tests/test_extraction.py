"""extraction: diff-in-means candidate grids on the tiny model, including a planted
direction recovered end to end.
"""

from __future__ import annotations

import pytest
import torch

from persona_refusal import activations, extraction
from persona_refusal.errors import ConfigError
from persona_refusal.extraction import extract_directions
from persona_refusal.interventions import AddVector


def test_extract_directions_shapes_and_metadata(tiny, prompts):
    grid = extract_directions(tiny, prompts[:3], prompts[3:], positions=[-3, -1], layers=[0, 2], progress=False)
    assert grid.diff.shape == (2, 2, 64) and grid.diff.dtype == torch.float64
    assert (grid.positions, grid.layers, grid.n_positive, grid.n_negative) == ((-3, -1), (0, 2), 3, 2)
    assert (grid.model_id, grid.model_checksum) == (tiny.model_id, tiny.checksum)
    assert grid.provenance["method"] == "diff_in_means"
    full = extract_directions(tiny, prompts[:1], prompts[1:2], progress=False)
    assert full.diff.shape == (len(tiny.post_instruction_positions), tiny.n_layers, tiny.d_model)
    with pytest.raises(ConfigError):
        extract_directions(tiny, [], prompts, progress=False)
    with pytest.raises(ConfigError):
        extract_directions(tiny, prompts, prompts, layers=[4], progress=False)


def test_extract_recovers_a_planted_direction(tiny, prompts, make_direction, monkeypatch):
    """Run the positive set under AddVector(v, layer=2): the diff is v at layer 2, 0 before it."""
    v = make_direction(model=tiny, layer=2, seed=11, scale=0.5)
    real = activations.mean_activations

    def planted(chat_model, instructions, *, desc=None, **kwargs):
        if desc and "+ prompts" in desc:  # extract_directions labels the positive pass so
            kwargs["interventions"] = [AddVector(v, 1.0)]
        return real(chat_model, instructions, desc=desc, **kwargs)

    monkeypatch.setattr(extraction, "mean_activations", planted)
    grid = extract_directions(tiny, prompts, prompts, positions=[-8, -1], progress=False)
    diff = grid.diff
    assert float(diff[:, :2].abs().max()) < 1e-6  # layers 0-1: identical runs
    for i in range(2):
        assert torch.allclose(diff[i, 2].float(), v.vector, atol=1e-5)  # layer 2: exactly v
    assert float(diff[:, 3].norm(dim=-1).min()) > 1e-3  # layer 3 feels it (not checked for equality)
    # Without the plant, the same prompts on both sides give exactly zero everywhere.
    monkeypatch.setattr(extraction, "mean_activations", real)
    assert float(extract_directions(tiny, prompts, prompts, progress=False).diff.abs().max()) == 0.0
