"""The command line given direction files that are swapped, incomplete or malformed: each
is a one-line error (exit 2, no traceback) that says what the file holds or lacks, and
nothing is written.

``--refusal-direction`` takes a saved :class:`Direction`, ``--persona-direction`` saved
:class:`LayerDirections`; the messages come from their ``load``. ``docs/bad-input.md``
lists them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persona_refusal.directions import Direction, LayerDirections

from conftest import edited_copy
from bad_input_cases import DIRECTION_CASES
from clitools import RUN, Result, assert_one_line_error, cli, cli_env, run_bad_case  # noqa: F401  (fixtures)


def _edit(folder: Path, source: str, name: str, change=None, tensors=None) -> None:
    """``name``: a copy of the pair ``source`` in ``folder``, edited (see ``conftest.edited_copy``)."""
    edited_copy(folder / source, folder / name, change, tensors)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Direction files for the tiny model (width 64, 4 layers): good ones and broken copies."""
    d = tmp_path_factory.mktemp("direction_files")
    g = torch.Generator().manual_seed(0)
    tiny = dict(model_id="persona-refusal/tiny")
    Direction(vector=torch.randn(64, generator=g), layer=1, name="refusal", **tiny).save(d / "refusal")
    LayerDirections(vectors=torch.randn(4, 64, generator=g), layers=(0, 1, 2, 3), name="persona",
                    **tiny).save(d / "persona")
    _edit(d, "refusal", "no_layer", lambda m: m.pop("layer"))
    _edit(d, "refusal", "text_layer", lambda m: m.update(layer="abc"))
    _edit(d, "refusal", "fraction_layer", lambda m: m.update(layer=2.7))
    _edit(d, "refusal", "evil_hook", lambda m: m.update(hook_name="evil.hook"))
    _edit(d, "refusal", "other_hook", lambda m: m.update(hook_name="blocks.3.hook_resid_pre"))
    _edit(d, "refusal", "newer", lambda m: m.update(format="persona_refusal.direction/2"))
    _edit(d, "refusal", "no_vector", tensors={"weights": torch.randn(64, generator=g)})
    _edit(d, "refusal", "int_vector", tensors={"vector": torch.arange(1, 65)})
    _edit(d, "persona", "persona_text_layers", lambda m: m.update(layers=[0, 1, "two", 3]))
    return d


CASES = DIRECTION_CASES


@pytest.mark.parametrize("case, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_direction_file_is_one_line_error(cli, files, tmp_path, case, args, expected):
    run_bad_case(cli, files, tmp_path, case, args, expected)
