"""directions: the Direction family (validation, save/load, model checks, files saved by
earlier versions), the shared metadata and per-layer access (``vector_at``).

Extraction and selection have their own files (test_extraction.py, test_selection.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from persona_refusal.directions import Direction, DirectionGrid, DirectionMeta, LayerDirections
from persona_refusal.errors import ConfigError, DirectionMismatchError

from conftest import edited_copy, no_typecheck

GOLDEN = Path(__file__).parent / "data" / "directions_v1"
"""Files saved by the code before the shared :class:`DirectionMeta` (made by ``_golden_objects``)."""


# ----------------------------------------------------------------------------- Direction
def test_direction_defaults():
    d = Direction(vector=torch.ones(4, dtype=torch.float64), layer=2)
    assert d.hook_name == "blocks.2.hook_resid_pre"
    assert d.position == -1 and d.name == "direction" and d.reference is None and d.model_id is None
    assert d.vector.dtype == torch.float32 and d.d_model == 4 and d.norm == pytest.approx(2.0)
    assert torch.allclose(d.unit, torch.full((4,), 0.5))
    assert d.at(7) is d
    assert "layer=2" in repr(d) and "blocks.2.hook_resid_pre" in repr(d)
    assert Direction(vector=torch.ones(4), layer=2, hook_name="blocks.2.hook_resid_mid").hook_name == \
        "blocks.2.hook_resid_mid"


def test_direction_validation(no_typecheck):
    with no_typecheck():  # the package's own checks (what users see without the test hook)
        with pytest.raises(ConfigError, match="1-D float"):
            Direction(vector=torch.ones(2, 3), layer=0)
        with pytest.raises(ConfigError, match="must be floating point, got dtype int64"):
            Direction(vector=torch.arange(3), layer=0)
        with pytest.raises(ConfigError, match="reference has shape"):
            Direction(vector=torch.ones(3), layer=0, reference=torch.ones(4))
        with pytest.raises(ConfigError, match="layer"):
            Direction(vector=torch.ones(3), layer=-1)
    with pytest.raises(ConfigError, match="non-zero"):
        Direction(vector=torch.zeros(3), layer=0)
    with pytest.raises(ConfigError, match="finite"):
        Direction(vector=torch.tensor([1.0, float("nan")]), layer=0)


def test_rescaled_and_replace(make_direction):
    d = make_direction(layer=1, seed=3)
    d.provenance["source"] = "test"
    r = d.rescaled(5.0)
    assert r.norm == pytest.approx(5.0, rel=1e-6)
    assert torch.allclose(r.unit, d.unit, atol=1e-6)
    assert torch.equal(r.reference, d.reference) and (r.layer, r.name, r.hook_name) == (d.layer, d.name, d.hook_name)
    moved = d.replace(layer=3)
    assert moved.hook_name == "blocks.3.hook_resid_pre" and torch.equal(moved.vector, d.vector)
    assert d.replace(layer=3, hook_name="blocks.3.hook_mlp_out").hook_name == "blocks.3.hook_mlp_out"
    renamed = d.replace(name="other")
    renamed.provenance["source"] = "changed"
    assert d.provenance["source"] == "test"  # provenance is copied, not shared
    assert d.layer == 1 and d.name == "test"


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_direction_save_load_roundtrip(tmp_path, make_direction, tiny, suffix):
    d = make_direction(model=tiny, layer=2, seed=1).replace(position=-3, n_positive=10, n_negative=12,
                                                           provenance={"method": "test", "nested": [1, 2]})
    json_path = d.save(tmp_path / "refusal")
    assert json_path.name == "refusal.json" and (tmp_path / "refusal.safetensors").is_file()
    back = Direction.load(str(tmp_path / "refusal") + suffix, chat_model=tiny)
    assert torch.equal(back.vector, d.vector) and torch.equal(back.reference, d.reference)
    for attr in ("layer", "hook_name", "position", "name", "model_id", "model_checksum", "n_positive",
                 "n_negative", "provenance"):
        assert getattr(back, attr) == getattr(d, attr), attr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refusal.json", "refusal.safetensors"]


def test_direction_without_reference_roundtrip(tmp_path, make_direction):
    d = make_direction(reference=False)
    d.save(tmp_path / "d.json")
    assert Direction.load(tmp_path / "d").reference is None


def test_loading_a_mismatched_pair_fails(tmp_path, make_direction):
    make_direction(seed=1).save(tmp_path / "a")
    make_direction(seed=2).save(tmp_path / "b")
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(DirectionMismatchError, match="do not belong together"):
        Direction.load(tmp_path / "a")
    (tmp_path / "b.json").unlink()
    with pytest.raises(DirectionMismatchError, match="missing"):
        Direction.load(tmp_path / "b")
    (tmp_path / "c.json").write_text('{"format": "something else"}')
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "c.safetensors")
    with pytest.raises(DirectionMismatchError, match="not a persona_refusal"):
        Direction.load(tmp_path / "c")


def test_check_against_model(tiny, make_direction):
    ok = make_direction(model=tiny)
    assert ok.check(tiny) is ok
    assert make_direction().check(tiny)  # unknown origin: no identity check
    with pytest.raises(DirectionMismatchError, match="width 32") as info:
        make_direction(32, model=tiny).check(tiny)
    assert isinstance(info.value, ValueError)
    with pytest.raises(DirectionMismatchError):
        make_direction(32).check(tiny, allow_transfer=True)  # width is never negotiable
    other_model = make_direction().replace(model_id="someone/else", model_checksum="abc")
    with pytest.raises(DirectionMismatchError, match="allow_transfer"):
        other_model.check(tiny)
    assert other_model.check(tiny, allow_transfer=True) is other_model
    other_weights = ok.replace(model_checksum="0" * 64)
    with pytest.raises(DirectionMismatchError, match="checksum"):
        other_weights.check(tiny)


def test_load_checks_the_model(tmp_path, tiny, make_direction):
    make_direction().replace(model_id="someone/else").save(tmp_path / "x")
    with pytest.raises(DirectionMismatchError):
        Direction.load(tmp_path / "x", chat_model=tiny)
    assert Direction.load(tmp_path / "x", chat_model=tiny, allow_transfer=True).model_id == "someone/else"


# ----------------------------------------------------------------------------- grids
def _grid(seed=0, positions=(-2, -1), layers=(0, 1, 2, 3), d_model=64, model=None) -> DirectionGrid:
    g = torch.Generator().manual_seed(seed)
    shape = (len(positions), len(layers), d_model)
    return DirectionGrid(
        positive_mean=torch.randn(shape, generator=g, dtype=torch.float64) + 1.0,
        negative_mean=torch.randn(shape, generator=g, dtype=torch.float64),
        positions=tuple(positions), layers=tuple(layers),
        model_id=None if model is None else model.model_id,
        model_checksum=None if model is None else model.checksum,
        n_positive=7, n_negative=9, provenance={"why": "test"},
    )


def test_grid_direction_and_layer_directions():
    grid = _grid()
    d = grid.direction(-2, 3)
    assert (d.layer, d.position, d.hook_name) == (3, -2, "blocks.3.hook_resid_pre")
    assert torch.allclose(d.vector, (grid.positive_mean[0, 3] - grid.negative_mean[0, 3]).float())
    assert torch.allclose(d.reference, grid.negative_mean[0, 3].float())
    assert (d.n_positive, d.n_negative, d.provenance) == (7, 9, {"why": "test"})
    with pytest.raises(ConfigError, match="position -5"):
        grid.direction(-5, 0)
    with pytest.raises(ConfigError, match="layer 7"):
        grid.direction(-1, 7)
    ld = grid.layer_directions(-1)
    assert ld.layers == (0, 1, 2, 3) and ld.vectors.shape == (4, 64)
    for layer in ld.layers:
        a, b = ld.at(layer), grid.direction(-1, layer)
        assert torch.equal(a.vector, b.vector) and torch.equal(a.reference, b.reference) and a.layer == layer
    with pytest.raises(ConfigError, match="no direction at layer 9"):
        ld.at(9)
    assert ld.norms.shape == (4,) and "LayerDirections" in repr(ld) and "DirectionGrid" in repr(grid)


def test_layer_directions_validation(no_typecheck):
    with no_typecheck(), pytest.raises(ConfigError):
        LayerDirections(vectors=torch.ones(3, 8), layers=(0, 1))
    with no_typecheck(), pytest.raises(ConfigError):
        LayerDirections(vectors=torch.ones(2, 8), layers=(0, 1), references=torch.ones(2, 4))


def test_grid_and_layer_directions_save_load(tmp_path, tiny):
    grid = _grid(model=tiny)
    grid.save(tmp_path / "grid")
    back = DirectionGrid.load(tmp_path / "grid.json", chat_model=tiny)
    assert torch.equal(back.positive_mean, grid.positive_mean) and torch.equal(back.negative_mean, grid.negative_mean)
    assert back.positive_mean.dtype == torch.float64
    assert (back.positions, back.layers, back.n_positive, back.n_negative, back.provenance, back.model_id) == (
        grid.positions, grid.layers, 7, 9, {"why": "test"}, tiny.model_id)
    ld = grid.layer_directions(-2)
    ld.save(tmp_path / "layers.safetensors")
    ld_back = LayerDirections.load(tmp_path / "layers", chat_model=tiny)
    assert torch.equal(ld_back.vectors, ld.vectors) and torch.equal(ld_back.references, ld.references)
    assert (ld_back.layers, ld_back.position, ld_back.model_id) == (ld.layers, -2, tiny.model_id)
    # A grid of another width does not load onto the model.
    _grid(d_model=32).save(tmp_path / "narrow")
    with pytest.raises(DirectionMismatchError):
        DirectionGrid.load(tmp_path / "narrow", chat_model=tiny)
    with pytest.raises(DirectionMismatchError):
        LayerDirections(vectors=torch.ones(1, 64), layers=(9,)).check(tiny)


# ----------------------------------------------------------------------------- golden files
def _golden_objects() -> dict:
    """The objects whose files are in ``tests/data/directions_v1`` (same seeds, same order)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    d = Direction(vector=r(4), layer=2, reference=r(4), name="refusal", model_id="persona-refusal/tiny",
                  model_checksum="abc123", n_positive=3, n_negative=5, provenance={"scores": [1.5, -0.25], "note": "é"})
    d0 = Direction(vector=r(4), layer=0, hook_name="blocks.0.hook_resid_mid", position=None)
    ld = LayerDirections(vectors=r(3, 4), layers=(0, 1, 2), references=r(3, 4), position=-2, name="persona",
                         model_id="m", model_checksum="c", n_positive=7, n_negative=7, provenance={"k": 1})
    ld0 = LayerDirections(vectors=r(2, 4), layers=(1, 3))
    gr = DirectionGrid(positive_mean=r(2, 3, 4).double(), negative_mean=r(2, 3, 4).double(), positions=(-2, -1),
                       layers=(0, 1, 2), model_id="m", model_checksum="c", n_positive=4, n_negative=6,
                       provenance={"harmful": "h"})
    gr0 = DirectionGrid(positive_mean=r(1, 2, 4).double(), negative_mean=r(1, 2, 4).double(), positions=(-1,),
                        layers=(0, 1))
    return {"direction": d, "direction_bare": d0, "layer_directions": ld, "layer_directions_bare": ld0,
            "grid": gr, "grid_bare": gr0}


def _tensors_of(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", list(_golden_objects()))
def test_saved_files_are_byte_identical_to_the_golden_ones(tmp_path, name):
    """The file format is frozen: today's save writes exactly the bytes the earlier code wrote."""
    _golden_objects()[name].save(tmp_path / name)
    for ext in (".json", ".safetensors"):
        assert (tmp_path / (name + ext)).read_bytes() == (GOLDEN / (name + ext)).read_bytes(), name + ext


@pytest.mark.parametrize("name", list(_golden_objects()))
def test_golden_files_load(name):
    """Files saved by the earlier code load into equal objects."""
    want = _golden_objects()[name]
    got = type(want).load(GOLDEN / name)
    assert repr(got) == repr(want)
    assert got.meta() == want.meta()
    assert _tensors_of(got).keys() == _tensors_of(want).keys()
    assert all(torch.equal(t, _tensors_of(want)[k]) for k, t in _tensors_of(got).items())


# ----------------------------------------------------------------------------- shared metadata
def test_every_direction_type_shares_one_metadata_type():
    objs = _golden_objects()
    assert all(isinstance(o, DirectionMeta) for o in objs.values())
    meta = objs["grid"].meta()
    assert meta == {"name": "refusal", "model_id": "m", "model_checksum": "c", "n_positive": 4, "n_negative": 6,
                    "provenance": {"harmful": "h"}}
    assert meta["provenance"] is not objs["grid"].provenance  # a copy: derived objects do not share it
    # Derived objects carry the metadata on.
    assert objs["grid"].direction(-1, 1).meta() == meta and objs["grid"].layer_directions(-2).meta() == meta
    assert objs["layer_directions"].at(1).meta() == objs["layer_directions"].meta()
    # Each type keeps its own defaults.
    assert (objs["direction_bare"].name, objs["layer_directions_bare"].name, objs["grid_bare"].name) == (
        "direction", "directions", "refusal")
    assert (objs["direction_bare"].n_positive, objs["grid_bare"].n_positive) == (None, 0)


def test_grid_check(tiny):
    grid = _grid(model=tiny)
    assert grid.check(tiny) is grid
    with pytest.raises(DirectionMismatchError, match="direction grid"):
        _grid(d_model=32).check(tiny)


# ----------------------------------------------------------------------------- vector_at
def test_vector_at_and_reference_at():
    d = Direction(vector=torch.ones(4), layer=2, reference=torch.zeros(4))
    for layer in (0, 2, 9):  # one vector, whatever the layer
        assert d.vector_at(layer) is d.vector and d.reference_at(layer) is d.reference
    assert d.has_reference and not Direction(vector=torch.ones(4), layer=2).has_reference
    assert Direction(vector=torch.ones(4), layer=2).reference_at(2) is None

    vectors = torch.arange(12.0).reshape(3, 4)
    vectors[0] = 0.0  # a zero row is returned as it is (ablation skips it, at() refuses it)
    ld = LayerDirections(vectors=vectors, layers=(3, 5, 7), references=-vectors, name="p")
    for i, layer in enumerate(ld.layers):
        assert torch.equal(ld.vector_at(layer), vectors[i]) and torch.equal(ld.reference_at(layer), -vectors[i])
    assert torch.equal(ld.vector_at(3), torch.zeros(4))
    with pytest.raises(ConfigError, match="'p' has no direction at layer 4"):
        ld.vector_at(4)
    with pytest.raises(ConfigError, match="no direction at layer 8"):
        ld.reference_at(8)
    bare = LayerDirections(vectors=vectors, layers=(3, 5, 7))
    assert bare.reference_at(5) is None and not bare.has_reference and ld.has_reference
    assert torch.equal(ld.at(5).vector, ld.vector_at(5))


# ----------------------------------------------------------------------------- bad files, bad fields
def _edited_copy(tmp_path, source: Path, name: str, change=None, tensors=None) -> Path:
    """A copy of the saved pair ``source`` as ``name`` (see ``conftest.edited_copy``)."""
    return edited_copy(source, tmp_path / name, change, tensors)


def _load_error(cls, path, error=DirectionMismatchError) -> str:
    """The one-line error of ``cls.load(path)``, as users see it (without the test's type-check hook)."""
    with no_typecheck(), pytest.raises(error) as info:
        cls.load(path)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError)
    return msg


@pytest.mark.parametrize("cls, saved, held", [
    (Direction, "layer_directions", "holds persona_refusal LayerDirections (one vector per layer), not a Direction "
                                    "(save one with Direction.save)"),
    (Direction, "grid", "holds a persona_refusal DirectionGrid (candidate directions per position and layer), "
                        "not a Direction (save one with Direction.save)"),
    (LayerDirections, "direction", "holds a persona_refusal Direction (one vector), not LayerDirections "
                                   "(save one with LayerDirections.save)"),
    (LayerDirections, "grid", "holds a persona_refusal DirectionGrid (candidate directions per position and layer), "
                              "not LayerDirections (save one with LayerDirections.save)"),
    (DirectionGrid, "direction", "holds a persona_refusal Direction (one vector), not a DirectionGrid "
                                 "(save one with DirectionGrid.save)"),
    (DirectionGrid, "layer_directions", "holds persona_refusal LayerDirections (one vector per layer), not a "
                                        "DirectionGrid (save one with DirectionGrid.save)"),
])
def test_a_file_of_another_type_says_what_it_holds(cls, saved, held):
    for given in (GOLDEN / saved, GOLDEN / f"{saved}.safetensors", GOLDEN / f"{saved}.json"):
        assert _load_error(cls, given) == f"{GOLDEN / saved}.json {held}"


def test_a_file_of_another_format_is_named(tmp_path):
    newer = _edited_copy(tmp_path, GOLDEN / "direction", "newer", lambda m: m.update(format="persona_refusal.direction/2"))
    assert _load_error(Direction, newer) == (
        f"{newer}.json is a direction file in format 'persona_refusal.direction/2', which this version of "
        "persona_refusal cannot read (it reads 'persona_refusal.direction/1') (save it again with this version, or "
        "upgrade persona_refusal)")
    results = _edited_copy(tmp_path, GOLDEN / "direction", "results", lambda m: m.update(format="persona_refusal.gating/1"))
    assert _load_error(LayerDirections, results) == (
        f"{results}.json is a persona_refusal file of format 'persona_refusal.gating/1', not LayerDirections "
        "(save one with LayerDirections.save)")


@pytest.mark.parametrize("cls, saved, key", [
    (Direction, "direction", "layer"), (LayerDirections, "layer_directions", "layers"),
    (DirectionGrid, "grid", "positions"), (DirectionGrid, "grid", "layers"),
])
def test_a_missing_field_is_named(tmp_path, cls, saved, key):
    path = _edited_copy(tmp_path, GOLDEN / saved, "no_field", lambda m: m.pop(key))
    assert _load_error(cls, path) == (f"{cls._WHAT} file {path}.json has no {key!r} field "
                                      f"(save one with {cls.__name__}.save)")


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), (2.7, "2.7"), (2.0, "2.0"), (True, "True"), (-1, "-1"),
                                          (None, "None"), ([2], "[2]")])
def test_a_bad_layer_in_the_file_is_refused_not_truncated(tmp_path, value, shown):
    path = _edited_copy(tmp_path, GOLDEN / "direction", "bad_layer", lambda m: m.update(layer=value))
    msg = _load_error(Direction, path, ConfigError)
    if value == -1:
        assert msg == f"direction file {path}.json: layer must be a non-negative integer, got -1"
    else:
        assert msg == f"direction file {path}.json: layer must be a non-negative integer, got {shown} (use a whole number)"


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(hook_name="evil.hook"),
     "hook_name 'evil.hook' is not a residual-stream hook this package supports (use blocks.2.hook_SITE with SITE one "
     "of resid_pre, resid_mid, resid_post, attn_out, mlp_out, or leave hook_name out)"),
    (lambda m: m.update(hook_name="blocks.2.attn.hook_z"), "hook_name 'blocks.2.attn.hook_z' is not a residual-stream"),
    (lambda m: m.update(hook_name="blocks.2.hook_nothing"), "hook_name 'blocks.2.hook_nothing' is not a residual-stream"),
    (lambda m: m.update(hook_name=7), "hook_name 7 is not a residual-stream"),
    (lambda m: m.update(hook_name="blocks.3.hook_resid_pre"),
     "hook_name 'blocks.3.hook_resid_pre' is at layer 3, but the direction's layer is 2 (give a hook name of the same "
     "layer, or leave hook_name out)"),
    (lambda m: m.update(position="last"), "position must be an integer, got 'last' (use a whole number)"),
    (lambda m: m.update(position=-1.5), "position must be an integer, got -1.5"),
    (lambda m: m.update(name=5), "name must be text, got 5"),
    (lambda m: m.update(model_id=["m"]), "model_id must be text or null, got ['m']"),
    (lambda m: m.update(n_positive="three"), "n_positive must be a non-negative integer, got 'three'"),
    (lambda m: m.update(provenance=[1]), "provenance must be a JSON object, got [1]"),
])
def test_bad_fields_in_the_file_are_refused(tmp_path, change, message):
    path = _edited_copy(tmp_path, GOLDEN / "direction", "bad", change)
    assert _load_error(Direction, path, ConfigError).startswith(f"direction file {path}.json: {message}")


def test_bad_list_fields_in_the_file_are_refused(tmp_path):
    for cls, saved, change, message in [
        (LayerDirections, "layer_directions", lambda m: m.update(layers="012"),
         "layers must be a list of integers, got '012'"),
        (LayerDirections, "layer_directions", lambda m: m.update(layers=[0, 1.5, 2]),
         "layers entry must be a non-negative integer, got 1.5"),
        (LayerDirections, "layer_directions", lambda m: m.update(layers=[0, 1, 1]), "layers [0, 1, 1] holds a value twice"),
        (LayerDirections, "layer_directions", lambda m: m.update(layers=[0, 1]), "vectors (3, 4) do not match 2 layers"),
        (DirectionGrid, "grid", lambda m: m.update(positions=["-1", -2]), "positions entry must be an integer, got '-1'"),
        (DirectionGrid, "grid", lambda m: m.update(layers=[0, 1, 2, 3]),
         "positive_mean has shape (2, 3, 4), not [2 positions, 4 layers, d_model]"),
    ]:
        path = _edited_copy(tmp_path, GOLDEN / saved, "bad", change)
        msg = _load_error(cls, path, ConfigError)
        assert msg.startswith(f"{cls._WHAT} file {path}.json: {message}"), msg


@pytest.mark.parametrize("cls, saved, tensors, message", [
    (Direction, "direction", {"weights": torch.ones(4)}, "has no 'vector' tensor (it holds ['weights'])"),
    (Direction, "direction", {"reference": torch.ones(4)}, "has no 'vector' tensor (it holds ['reference'])"),
    (LayerDirections, "layer_directions", {"vector": torch.ones(4)}, "has no 'vectors' tensor (it holds ['vector'])"),
    (DirectionGrid, "grid", {"positive_mean": torch.ones(2, 3, 4)}, "has no 'negative_mean' tensor (it holds ['positive_mean'])"),
])
def test_a_missing_tensor_is_named(tmp_path, cls, saved, tensors, message):
    path = _edited_copy(tmp_path, GOLDEN / saved, "no_tensor", tensors=tensors)
    assert _load_error(cls, path) == (f"{cls._WHAT} file {path}.safetensors {message} "
                                      f"(save one with {cls.__name__}.save)")


def test_integer_tensors_are_refused_for_their_dtype(tmp_path):
    with no_typecheck():
        for make in (lambda: Direction(vector=torch.arange(1, 4), layer=0),
                     lambda: Direction(vector=torch.ones(3), layer=0, reference=torch.arange(3)),
                     lambda: LayerDirections(vectors=torch.ones(2, 3, dtype=torch.int64), layers=(0, 1))):
            with pytest.raises(ConfigError, match=r"must be floating point, got dtype int64 \(convert it, e\.g\. with "
                                                  r"\.float\(\)\)"):
                make()
    path = _edited_copy(tmp_path, GOLDEN / "direction", "int", tensors={"vector": torch.arange(1, 5)})
    assert _load_error(Direction, path, ConfigError) == (
        f"direction file {path}.json: a direction's vector must be floating point, got dtype int64 (convert it, "
        "e.g. with .float())")


def test_layers_and_hook_names_are_checked_when_made():
    import numpy as np

    v = torch.ones(4)
    with no_typecheck():  # the annotations say int; what users see without the test hook
        for layer in (2.7, 2.0, True, "2", None):
            with pytest.raises(ConfigError, match=r"layer must be a non-negative integer, got .* \(use a whole number\)"):
                Direction(vector=v, layer=layer)
        assert Direction(vector=v, layer=np.int64(2)).layer == 2 and type(Direction(vector=v, layer=np.int64(2)).layer) is int
        assert Direction(vector=v, layer=torch.tensor(3)).hook_name == "blocks.3.hook_resid_pre"
        with pytest.raises(ConfigError, match="position must be an integer, got -1.5"):
            Direction(vector=v, layer=1, position=-1.5)
        with pytest.raises(ConfigError, match="layers entry must be a non-negative integer, got 1.5"):
            LayerDirections(vectors=torch.ones(2, 4), layers=(0, 1.5))
        with pytest.raises(ConfigError, match="holds a value twice"):
            LayerDirections(vectors=torch.ones(2, 4), layers=(1, 1))
        with pytest.raises(ConfigError, match="positions entry must be an integer"):
            DirectionGrid(positive_mean=torch.ones(1, 1, 4), negative_mean=torch.ones(1, 1, 4), positions=(-1.0,), layers=(0,))
    for name in ("evil.hook", "blocks.2.hook_attn_scores", "blocks.2.attn.hook_z", "blocks.02.hook_resid_pre",
                 "blocks.2.hook_resid_pre.x"):
        with pytest.raises(ConfigError, match="is not a residual-stream hook this package supports"):
            Direction(vector=v, layer=2, hook_name=name)
    with pytest.raises(ConfigError, match="is at layer 1, but the direction's layer is 2"):
        Direction(vector=v, layer=2, hook_name="blocks.1.hook_resid_pre")
    for site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        assert Direction(vector=v, layer=2, hook_name=f"blocks.2.hook_{site}").hook_name == f"blocks.2.hook_{site}"
    d = Direction(vector=v, layer=2, hook_name="blocks.2.hook_mlp_out")
    assert d.replace(layer=3).hook_name == "blocks.3.hook_resid_pre"  # a new layer gets its default hook
