"""The command line given direction files that are swapped, incomplete or malformed: each
is a one-line error (exit 2, no traceback) that says what the file holds or lacks, and
nothing is written.

``--refusal-direction`` takes a saved :class:`Direction`, ``--persona-direction`` saved
:class:`LayerDirections`; the messages come from their ``load``. ``docs/bad-input.md``
lists them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from persona_refusal.directions import Direction, LayerDirections
from persona_refusal.storage import write_tensors

from clitools import RUN, Result, assert_one_line_error, cli, cli_env  # noqa: F401  (fixtures)


def _edit(folder: Path, source: str, name: str, change=None, tensors=None) -> None:
    """``name``.json/.safetensors: a copy of the pair ``source``, its JSON changed by
    ``change(meta)`` and its tensors replaced by ``tensors`` (then without a checksum)."""
    meta = json.loads((folder / f"{source}.json").read_text())
    shutil.copy(folder / f"{source}.safetensors", folder / f"{name}.safetensors")
    if tensors is not None:
        write_tensors(folder / f"{name}.safetensors", tensors, metadata={"format": "persona_refusal.direction/1"})
        meta.pop("tensors_sha256")
    if change is not None:
        change(meta)
    (folder / f"{name}.json").write_text(json.dumps(meta))


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


# (case id, flags after `run --model tiny --preset smoke --quiet --no-figures --out OUT`, the line on stderr)
CASES = [
    ("persona directions given as the refusal direction", ["--refusal-direction", "persona.json"],
     r"error: /.*/persona\.json holds persona_refusal LayerDirections \(one vector per layer\), not a Direction "
     r"\(save one with Direction\.save\)"),
    ("a direction given as the persona directions", ["--persona-direction", "refusal"],
     r"error: /.*/refusal\.json holds a persona_refusal Direction \(one vector\), not LayerDirections "
     r"\(save one with LayerDirections\.save\)"),
    ("sidecar without layer", ["--refusal-direction", "no_layer.json"],
     r"error: direction file /.*/no_layer\.json has no 'layer' field \(save one with Direction\.save\)"),
    ("layer given as text", ["--refusal-direction", "text_layer"],
     r"error: direction file /.*/text_layer\.json: layer must be a non-negative integer, got 'abc' "
     r"\(use a whole number\)"),
    ("layer not a whole number", ["--refusal-direction", "fraction_layer.safetensors"],
     r"error: direction file /.*/fraction_layer\.json: layer must be a non-negative integer, got 2\.7 "
     r"\(use a whole number\)"),
    ("persona layers with text", ["--persona-direction", "persona_text_layers"],
     r"error: directions file /.*/persona_text_layers\.json: layers entry must be a non-negative integer, got 'two' "
     r"\(use a whole number\)"),
    ("safetensors without the vector", ["--refusal-direction", "no_vector"],
     r"error: direction file /.*/no_vector\.safetensors has no 'vector' tensor \(it holds \['weights'\]\) "
     r"\(save one with Direction\.save\)"),
    ("integer vector", ["--refusal-direction", "int_vector"],
     r"error: direction file /.*/int_vector\.json: a direction's vector must be floating point, got dtype int64 "
     r"\(convert it, e\.g\. with \.float\(\)\)"),
    ("hook name that is not a residual-stream hook", ["--refusal-direction", "evil_hook"],
     r"error: direction file /.*/evil_hook\.json: hook_name 'evil\.hook' is not a residual-stream hook this package "
     r"supports \(use blocks\.1\.hook_SITE with SITE one of resid_pre, resid_mid, resid_post, attn_out, mlp_out, "
     r"or leave hook_name out\)"),
    ("hook name of another layer", ["--refusal-direction", "other_hook"],
     r"error: direction file /.*/other_hook\.json: hook_name 'blocks\.3\.hook_resid_pre' is at layer 3, but the "
     r"direction's layer is 1 \(give a hook name of the same layer, or leave hook_name out\)"),
    ("file format of a newer version", ["--refusal-direction", "newer"],
     r"error: /.*/newer\.json is a direction file in format 'persona_refusal\.direction/2', which this version of "
     r"persona_refusal cannot read \(it reads 'persona_refusal\.direction/1'\) \(save it again with this version, "
     r"or upgrade persona_refusal\)"),
]


@pytest.mark.parametrize("case, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_direction_file_is_one_line_error(cli, files, tmp_path, case, args, expected):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    out = work / "out"
    res = cli([*RUN, "--out", out, *args], cwd=work)
    line = assert_one_line_error(res, out)
    assert re.fullmatch(expected, line), f"\n{line}\n{expected}"
    assert not out.exists(), f"{case}: the output folder was created before the error"
