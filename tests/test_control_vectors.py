"""Directions as llama.cpp control vectors: the GGUF file, the layer mapping, the way back.

The file is read with the ``gguf`` package's own reader (the one repeng uses), so the
checks below are on what llama.cpp would load: tensors ``direction.N`` (float32, 1-D),
``general.architecture = controlvector``, ``controlvector.model_hint`` and
``controlvector.layer_count``. The layer mapping (package ``resid_pre`` layer ``l`` is
``direction.{l-1}``, added by llama.cpp to the output of block ``l-1``) is checked on the
tiny model: adding each tensor at ``blocks.{N}.hook_resid_post`` (llama.cpp's ``l_out``)
gives the logits of ``AddVector`` at ``resid_pre`` ``N+1``.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import persona_refusal as pr
from persona_refusal.cli import main
from persona_refusal.control_vectors import (
    FORMAT,
    export_control_vector,
    import_control_vector,
    import_target,
    llama_cpp_index,
    package_layer,
    parse_layers,
    read_directions,
)
from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
from persona_refusal.errors import ConfigError, DirectionMismatchError, PersonaRefusalError

from bad_input_cases import CONTROL_VECTOR_CASES

D = 64  # the tiny model's width


def _layer_directions(layers=(0, 1, 2, 3, 4), seed=0, **meta) -> LayerDirections:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(len(layers), D, generator=g)
    fields = dict(name="persona", model_id="persona-refusal/tiny", model_checksum="c" * 64, n_positive=12,
                  n_negative=11, provenance={"method": "diff-in-means", "prompts": [1, 2]}, position=-2)
    fields.update(meta)
    return LayerDirections(vectors=vectors, layers=tuple(layers), **fields)


def _direction(layer=3, seed=1, **kw) -> Direction:
    g = torch.Generator().manual_seed(seed)
    return Direction(vector=torch.randn(D, generator=g) * 5, layer=layer, name="refusal", **kw)


def _kv(reader: gguf.GGUFReader) -> dict:
    out = {}
    for name, f in reader.fields.items():
        if f.types[0] == gguf.GGUFValueType.STRING:
            out[name] = bytes(f.parts[f.data[0]]).decode()
        elif f.types[0] != gguf.GGUFValueType.ARRAY:
            out[name] = f.parts[f.data[0]][0].item()
    return out


def _tensors(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1
    return {t.name: np.array(t.data) for t in r.tensors}


def _write(path: Path, tensors: dict, *, arch="controlvector", hint="qwen2", count=None, extra=()) -> Path:
    """A control vector the way repeng's ``export_gguf`` writes one (plus ``extra`` fields)."""
    w = gguf.GGUFWriter(path, arch)
    if hint is not None:
        w.add_string("controlvector.model_hint", hint)
    w.add_uint32("controlvector.layer_count", len(tensors) if count is None else count)
    for adder, key, value in extra:
        getattr(w, adder)(key, value)
    for name, v in tensors.items():
        w.add_tensor(name, np.asarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _write_raw(path: Path, kv: dict[str, str], vectors: dict[str, np.ndarray]) -> Path:
    """GGUF v3 bytes by hand (string fields only), for files the writer will not make (no
    general.architecture)."""
    head = struct.pack("<4sIQQ", b"GGUF", 3, len(vectors), len(kv))
    head += b"".join(_gguf_string(k) + struct.pack("<I", 8) + _gguf_string(v) for k, v in kv.items())
    offset, data = 0, b""
    for name, v in vectors.items():
        head += _gguf_string(name) + struct.pack("<IQIQ", 1, v.size, 0, offset)
        data += v.astype("<f4").tobytes() + b"\0" * (-v.nbytes % 32)
        offset = len(data)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    return path


# ============================================================================ the file and the way back
def test_layer_directions_round_trip_is_bit_exact(tmp_path, caplog):
    ld = _layer_directions()
    with caplog.at_level(logging.WARNING, logger="persona_refusal.control_vectors"):
        path = export_control_vector(ld, tmp_path / "persona.gguf", model_hint="qwen2")
    assert "layers [0, 1] not exported" in caplog.text  # the embeddings and block 0's output: said, not silent
    tensors = _tensors(path)
    assert list(tensors) == ["direction.1", "direction.2", "direction.3"]  # resid_pre l -> direction.{l-1}
    for row, layer in enumerate(ld.layers):
        if layer >= 2:
            assert tensors[f"direction.{layer - 1}"].tobytes() == ld.vectors[row].numpy().tobytes()
    kv = _kv(gguf.GGUFReader(path))
    assert kv["general.architecture"] == "controlvector"
    assert kv["controlvector.model_hint"] == "qwen2"
    assert kv["controlvector.layer_count"] == 3
    assert kv["persona_refusal.format"] == FORMAT
    assert kv["persona_refusal.name"] == "persona" and kv["persona_refusal.source"] == "LayerDirections"
    assert kv["persona_refusal.model_id"] == "persona-refusal/tiny" and kv["persona_refusal.model_checksum"] == "c" * 64
    assert (kv["persona_refusal.n_positive"], kv["persona_refusal.n_negative"]) == (12, 11)
    assert kv["persona_refusal.position"] == -2 and kv["persona_refusal.site"] == "resid_pre"
    assert kv["persona_refusal.scale"] == 1.0 and kv["persona_refusal.unit"] is False
    assert json.loads(kv["persona_refusal.provenance"]) == ld.provenance

    back = import_control_vector(path)
    assert back.layers == (2, 3, 4)
    assert torch.equal(back.vectors, ld.vectors[2:])
    assert back.vectors.dtype == torch.float32
    for key in ("name", "model_id", "model_checksum", "n_positive", "n_negative", "position"):
        assert getattr(back, key) == getattr(ld, key), key
    cv = back.provenance.pop("control_vector")
    assert back.provenance == ld.provenance
    assert cv["model_hint"] == "qwen2" and cv["scale"] == 1.0 and cv["unit"] is False and cv["file"] == str(path)
    assert [back.at(l).hook_name for l in back.layers] == [f"blocks.{l}.hook_resid_pre" for l in (2, 3, 4)]
    # the same file again: replaced (it is one of ours), and identical bytes
    first = path.read_bytes()
    export_control_vector(ld, path, model_hint="qwen2")
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["persona.gguf"]  # no temporary file left behind


def test_a_direction_goes_to_its_own_layer_or_to_the_given_ones(tmp_path):
    d = _direction(layer=3, position=-1)
    one = _tensors(export_control_vector(d, tmp_path / "one.gguf", model_hint="llama"))
    assert list(one) == ["direction.2"] and one["direction.2"].tobytes() == d.vector.numpy().tobytes()

    many = _tensors(export_control_vector(d, tmp_path / "many.gguf", model_hint="llama", layers=[4, 2]))
    assert list(many) == ["direction.1", "direction.3"]  # written in llama.cpp's order
    assert all(v.tobytes() == d.vector.numpy().tobytes() for v in many.values())
    back = import_control_vector(tmp_path / "many.gguf")
    assert back.layers == (2, 4) and torch.equal(back.vectors, torch.stack([d.vector, d.vector]))
    assert back.name == "refusal" and back.position == -1
    assert back.provenance["control_vector"]["hook_name"] == "blocks.3.hook_resid_pre"

    # read at the output of block 3 = resid_pre 4 = llama.cpp's direction.3
    post = _direction(layer=3, hook_name="blocks.3.hook_resid_post")
    assert list(_tensors(export_control_vector(post, tmp_path / "post.gguf", model_hint="llama"))) == ["direction.3"]
    assert import_control_vector(tmp_path / "post.gguf").provenance["control_vector"]["site"] == "resid_post"


def test_scale_and_unit_are_what_is_written(tmp_path):
    d = _direction(layer=2)
    scaled = _tensors(export_control_vector(d, tmp_path / "s.gguf", model_hint="qwen2", scale=-2.5))["direction.1"]
    assert scaled.tobytes() == (d.vector * -2.5).numpy().tobytes()
    unit = _tensors(export_control_vector(d, tmp_path / "u.gguf", model_hint="qwen2", scale=4.0, unit=True))["direction.1"]
    assert unit.tobytes() == (d.unit * 4.0).numpy().tobytes()
    assert np.linalg.norm(unit) == pytest.approx(4.0, rel=1e-6)
    back = import_control_vector(tmp_path / "u.gguf")  # the file's values, with how they were made
    assert torch.equal(back.vectors[0], d.unit * 4.0)
    assert back.provenance["control_vector"]["scale"] == 4.0 and back.provenance["control_vector"]["unit"] is True

    zero = LayerDirections(vectors=torch.stack([torch.zeros(D), torch.ones(D)]), layers=(2, 3))
    rows = _tensors(export_control_vector(zero, tmp_path / "z.gguf", model_hint="qwen2", unit=True))
    assert not rows["direction.1"].any() and np.allclose(rows["direction.2"], 1 / np.sqrt(D))


def test_the_layer_mapping_is_llama_cpps_block_output(tiny, tmp_path):
    """llama.cpp adds direction.N to block N's output (``l_out``), here
    ``blocks.{N}.hook_resid_post``: the same logits as ``AddVector`` at ``resid_pre`` N+1."""
    d = _direction(layer=2, seed=3, model_id=tiny.model_id, model_checksum=tiny.checksum)
    ld = LayerDirections(vectors=torch.stack([d.vector, -0.5 * d.vector]), layers=(2, 4), model_id=tiny.model_id,
                         model_checksum=tiny.checksum)
    path = export_control_vector(ld, tmp_path / "v.gguf", model_hint="qwen2", model=tiny)
    vectors = {int(name.split(".")[1]): torch.from_numpy(v) for name, v in _tensors(path).items()}
    assert sorted(vectors) == [1, 3]
    tokens, _ = tiny.tokenize(tiny.format(["How do I bake bread?", "Tell me a story."]))

    def logits_with(hooks):
        with torch.inference_mode():
            return tiny.model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1].float()

    def add(v):
        return lambda act, hook: act + v

    llama = logits_with([(f"blocks.{n}.hook_resid_post", add(v)) for n, v in vectors.items()])
    with pr.apply(tiny, pr.AddVector(ld.at(2), 1.0), pr.AddVector(ld.at(4), 1.0)), torch.inference_mode():
        package = tiny.model(tokens)[:, -1].float()
    torch.testing.assert_close(llama, package, rtol=1e-5, atol=1e-5)
    off_by_one = logits_with([(f"blocks.{n}.hook_resid_pre", add(v)) for n, v in vectors.items()])
    assert (off_by_one - package).abs().max() > 1e-2  # the other reading of direction.N is measurably different


def test_a_foreign_control_vector_imports(tmp_path):
    g = torch.Generator().manual_seed(5)
    vecs = {i: torch.randn(D, generator=g).numpy() for i in (1, 2, 3)}
    path = _write(tmp_path / "happy.gguf", {f"direction.{i}": v for i, v in vecs.items()})  # as repeng writes it
    ld = import_control_vector(path)
    assert ld.layers == (2, 3, 4) and ld.name == "happy" and ld.model_id is None and ld.position is None
    for row, i in enumerate((1, 2, 3)):
        assert ld.vectors[row].numpy().tobytes() == vecs[i].tobytes()
    assert ld.provenance == {"control_vector": {
        "file": str(path), "model_hint": "qwen2", "layer_count": 3, "format": None, "source": None, "site": None,
        "hook_name": None, "scale": None, "unit": None}}
    # llama.cpp's cvector-generator: int32 layer count (n_layer - 1), gaps allowed
    w = gguf.GGUFWriter(tmp_path / "gen.gguf", "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 23)
    w.add_tensor("direction.5", vecs[1])
    w.add_tensor("direction.9", vecs[2])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    gen = import_control_vector(tmp_path / "gen.gguf")
    assert gen.layers == (6, 10) and gen.provenance["control_vector"]["layer_count"] == 23
    # imported, then exported again: the recorded hint is kept, the tensors are the same bytes
    again = _tensors(export_control_vector(gen, tmp_path / "again.gguf"))
    assert list(again) == ["direction.5", "direction.9"]
    assert again["direction.5"].tobytes() == vecs[1].tobytes()
    assert _kv(gguf.GGUFReader(tmp_path / "again.gguf"))["controlvector.model_hint"] == "llama"


def test_import_checks_the_vectors_against_a_model(tiny, tmp_path):
    ld = _layer_directions(layers=(2, 3, 4), model_id=tiny.model_id, model_checksum=tiny.checksum)
    path = export_control_vector(ld, tmp_path / "ok.gguf", model_hint="qwen2")
    assert import_control_vector(path, model=tiny).layers == (2, 3, 4)

    narrow = _write(tmp_path / "narrow.gguf", {"direction.1": np.ones(32, np.float32)})
    with pytest.raises(DirectionMismatchError, match=r"directions 'narrow' has width 32 but persona-refusal/tiny has "
                                                     r"d_model 64"):
        import_control_vector(narrow, model=tiny)
    deep = _write(tmp_path / "deep.gguf", {"direction.7": np.ones(D, np.float32)})
    with pytest.raises(DirectionMismatchError, match=r"layers \[8\] beyond the model's 4"):
        import_control_vector(deep, model=tiny)
    other = export_control_vector(_layer_directions(layers=(2,), model_id="other/model"), tmp_path / "other.gguf",
                                  model_hint="qwen2")
    with pytest.raises(DirectionMismatchError, match=r"was made with other/model"):
        import_control_vector(other, model=tiny)
    assert import_control_vector(other, model=tiny, allow_transfer=True).model_id == "other/model"


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and isinstance(excinfo.value, PersonaRefusalError)
    return msg


F32 = np.ones(D, np.float32)
BAD_FILES = [
    ("not GGUF", lambda p: p.write_bytes(b"NOPE" + bytes(64)),
     r".*bad\.gguf is not a readable GGUF file \(ValueError: GGUF magic invalid\) \(give a \.gguf control vector.*"),
    ("empty file", lambda p: p.write_bytes(b""), r".*bad\.gguf is not a readable GGUF file \(.*"),
    ("a model, not a control vector", lambda p: _write(p, {"direction.1": F32}, arch="qwen2"),
     r".*bad\.gguf is a GGUF file of architecture 'qwen2' \(a model\?\), not a control vector \(a llama\.cpp control "
     r"vector has general\.architecture = controlvector\)"),
    ("no architecture", lambda p: _write_raw(p, {"controlvector.model_hint": "qwen2"}, {"direction.1": F32}),
     r".*bad\.gguf has no general\.architecture field, so it is not a control vector \(.*\)"),
    ("no model hint", lambda p: _write(p, {"direction.1": F32}, hint=None),
     r"control vector .*bad\.gguf has no controlvector\.model_hint field \(the model architecture it is for\) \(add it "
     r"when writing the file, .*\)"),
    ("direction.0", lambda p: _write(p, {"direction.0": F32}),
     r"control vector .*bad\.gguf holds direction\.0, which llama\.cpp rejects \(block 0 is never steered\) \(remove "
     r"it: directions start at direction\.1\)"),
    ("another tensor", lambda p: _write(p, {"direction.1": F32, "blk.0.attn_q.weight": F32}),
     r"control vector .*bad\.gguf holds a tensor 'blk\.0\.attn_q\.weight', not direction\.N \(.*\)"),
    ("float16 tensor", lambda p: _write(p, {"direction.1": F32.astype(np.float16)}),
     r"control vector .*bad\.gguf: direction\.1 is F16, not F32 \(llama\.cpp reads float32 directions only\)"),
    ("2-D tensor", lambda p: _write(p, {"direction.1": np.ones((2, 32), np.float32)}),
     r"control vector .*bad\.gguf: direction\.1 has shape \[32, 2\], not one dimension \(.*\)"),
    ("lengths differ", lambda p: _write(p, {"direction.1": F32, "direction.2": F32[:10]}),
     r"control vector .*bad\.gguf: direction\.2 has 10 values, the others 64 \(every direction has the model's n_embd "
     r"values\)"),
    ("NaN", lambda p: _write(p, {"direction.1": np.full(D, np.nan, np.float32)}),
     r"control vector .*bad\.gguf: direction\.1 holds NaN or inf \(use a file with finite values\)"),
    ("no tensors", lambda p: _write(p, {}),
     r"control vector .*bad\.gguf holds no direction tensors \(write at least one direction\.N\)"),
    ("layer count of text", lambda p: _write_raw(p, {"general.architecture": "controlvector",
                                                     "controlvector.model_hint": "qwen2",
                                                     "controlvector.layer_count": "three"}, {"direction.1": F32}),
     r"control vector .*bad\.gguf: controlvector\.layer_count must be an integer, got a GGUF string"),
    ("newer format", lambda p: _write(p, {"direction.1": F32}, extra=[
        ("add_string", "persona_refusal.format", "persona_refusal.control_vector/2")]),
     r"control vector .*bad\.gguf is in format 'persona_refusal\.control_vector/2', which this version of "
     r"persona_refusal cannot read .*"),
    ("provenance not JSON", lambda p: _write(p, {"direction.1": F32}, extra=[
        ("add_string", "persona_refusal.format", FORMAT), ("add_string", "persona_refusal.provenance", "{oops")]),
     r"control vector .*bad\.gguf: persona_refusal\.provenance is not valid JSON \(.*\)"),
    ("position of the wrong type", lambda p: _write(p, {"direction.1": F32}, extra=[
        ("add_string", "persona_refusal.format", FORMAT), ("add_float32", "persona_refusal.position", -1.0)]),
     r"control vector .*bad\.gguf: persona_refusal\.position must be an integer, got a GGUF float32 \(.*\)"),
]


@pytest.mark.parametrize("case, make, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_a_one_line_error(tmp_path, case, make, expected):
    path = tmp_path / "bad.gguf"
    make(path)
    with pytest.raises((ConfigError, DirectionMismatchError)) as e:
        import_control_vector(path)
    assert re.fullmatch(expected, _one_line(e)), _one_line(e)


def test_truncated_file_is_a_one_line_error(tmp_path):
    good = export_control_vector(_layer_directions(layers=(2, 3)), tmp_path / "good.gguf", model_hint="qwen2")
    raw = good.read_bytes()
    for cut in (len(raw) - 40, 40):
        (tmp_path / "cut.gguf").write_bytes(raw[:cut])
        with pytest.raises((ConfigError, DirectionMismatchError)) as e:
            import_control_vector(tmp_path / "cut.gguf")
        assert re.search(r"cut\.gguf (is truncated|is not a readable GGUF file)", _one_line(e))
    with pytest.raises(DirectionMismatchError, match=r"control vector .*nowhere\.gguf does not exist"):
        import_control_vector(tmp_path / "nowhere.gguf")


EXPORT_ERRORS = [
    ("embeddings", lambda t: (_direction(layer=0), {}), r"layer 0 cannot be a llama\.cpp control vector: it is the "
                                                        r"embeddings .*\(use layers 2 or above\)"),
    ("block 0 output", lambda t: (_direction(layer=1), {}), r"layer 1 cannot be a llama\.cpp control vector: it is "
                                                            r"the output of block 0.*"),
    ("given layer 1", lambda t: (_direction(layer=3), {"layers": [1, 3]}), r"layer 1 cannot be .*"),
    ("resid_mid", lambda t: (_direction(layer=3, hook_name="blocks.3.hook_resid_mid"), {}),
     r"direction 'refusal' was read at blocks\.3\.hook_resid_mid, which has no llama\.cpp counterpart .*"),
    ("layers the directions lack", lambda t: (_layer_directions(layers=(2, 3)), {"layers": [3, 5]}),
     r"directions 'persona' have no direction at layers \[5\] \(they have \[2, 3\]\) \(pick layers the directions have\)"),
    ("only layers 0 and 1", lambda t: (_layer_directions(layers=(0, 1)), {}),
     r"directions 'persona' have only layers \[0, 1\], none of which llama\.cpp can steer \(.*\)"),
    ("empty layers", lambda t: (_direction(), {"layers": []}), r"layers is empty .*"),
    ("layers twice", lambda t: (_direction(), {"layers": [2, 2]}), r"layers \[2, 2\] holds a layer twice .*"),
    ("scale 0", lambda t: (_direction(), {"scale": 0}), r"scale is 0, which writes a control vector that does nothing .*"),
    ("scale nan", lambda t: (_direction(), {"scale": float("nan")}), r"scale must be a finite number, got nan .*"),
    ("overflow", lambda t: (_direction(), {"scale": 1e38}), r"scale 1e\+38 makes the vector at layers \[3\] overflow "
                                                           r"float32 \(use a smaller scale\)"),
    ("no model hint", lambda t: (_direction(), {"model_hint": None}),
     r"a control vector needs a model_hint .* \(pass model_hint='qwen2' \(--model-hint qwen2 on the command line\).*"),
    ("blank model hint", lambda t: (_direction(), {"model_hint": " "}), r"model_hint must be a non-empty name .*"),
    ("a grid", lambda t: (DirectionGrid(positive_mean=torch.ones(1, 2, D), negative_mean=torch.zeros(1, 2, D),
                                        positions=(-1,), layers=(2, 3)), {}),
     r"a DirectionGrid holds candidates, not one direction per layer \(export grid\.direction.*\)"),
    ("a folder", lambda t: (_direction(), {"path": t}), r".* is a folder \(give the path of the \.gguf file to write\)"),
    ("an existing model file", lambda t: (_direction(), {"path": _write(t / "model.gguf", {"x": F32}, arch="qwen2")}),
     r".*model\.gguf exists and is a GGUF file of architecture 'qwen2'; it is not replaced \(.*\)"),
    ("an existing repeng vector", lambda t: (_direction(), {"path": _write(t / "repeng.gguf", {"direction.1": F32})}),
     r".*repeng\.gguf exists and is a control vector persona_refusal did not write; it is not replaced \(.*\)"),
    ("an existing text file", lambda t: (_direction(), {"path": (t / "notes.txt", (t / "notes.txt").write_text("x"))[0]}),
     r".*notes\.txt exists and is not a control-vector file; it is not replaced \(.*\)"),
]


@pytest.mark.parametrize("case, make, expected", EXPORT_ERRORS, ids=[c[0] for c in EXPORT_ERRORS])
def test_export_refuses_with_one_line(tmp_path, case, make, expected, no_typecheck):
    directions, kw = make(tmp_path)
    path = kw.pop("path", tmp_path / "out.gguf")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    kw.setdefault("model_hint", "qwen2")
    with no_typecheck(), pytest.raises((ConfigError, DirectionMismatchError)) as e:
        export_control_vector(directions, path, **kw)
    assert re.fullmatch(expected, _one_line(e)), _one_line(e)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing written or replaced


def test_export_checks_against_a_model(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"layers \[5\] are beyond persona-refusal/tiny's 4 blocks \(use layers 2\.\.4\)"):
        export_control_vector(_direction(layer=5), tmp_path / "x.gguf", model_hint="qwen2", model=tiny)
    with pytest.raises(DirectionMismatchError, match=r"has width 32 but persona-refusal/tiny has d_model 64"):
        export_control_vector(Direction(vector=torch.ones(32), layer=2), tmp_path / "x.gguf", model_hint="qwen2",
                              model=tiny)
    with pytest.raises(ConfigError, match=r"needs a model_hint"):  # the tiny model's architecture has no llama.cpp name
        export_control_vector(_direction(layer=4), tmp_path / "x.gguf", model=tiny)
    assert not (tmp_path / "x.gguf").exists()
    ok = export_control_vector(_direction(layer=4), tmp_path / "x.gguf", model_hint="qwen2", model=tiny)
    assert list(_tensors(ok)) == ["direction.3"]  # resid_pre n_layers: the last block's output


def test_layer_helpers():
    assert [llama_cpp_index(l) for l in (2, 3, 24)] == [1, 2, 23]
    assert [package_layer(i) for i in (1, 2, 23)] == [2, 3, 24]
    assert parse_layers("2, 5-7,10") == (2, 5, 6, 7, 10)
    for bad, msg in (("", "empty"), ("3-1", "runs backwards"), ("2,2", "twice"), ("x", "not a layer"), ("-1", "not a layer")):
        with pytest.raises(ConfigError, match=msg):
            parse_layers(bad)


def test_read_directions_and_import_target(tmp_path):
    _direction().save(tmp_path / "r")
    _layer_directions().save(tmp_path / "p")
    assert isinstance(read_directions(tmp_path / "r.safetensors"), Direction)
    assert isinstance(read_directions(tmp_path / "p"), LayerDirections)
    DirectionGrid(positive_mean=torch.ones(1, 2, D), negative_mean=torch.zeros(1, 2, D), positions=(-1,),
                  layers=(2, 3)).save(tmp_path / "g")
    with pytest.raises(DirectionMismatchError, match=r"holds a DirectionGrid .*grid\.layer_directions\(position\)"):
        read_directions(tmp_path / "g.json")
    assert import_target(tmp_path, "x/happy.gguf") == tmp_path / "happy"
    assert import_target(tmp_path / "new.json", "happy.gguf") == tmp_path / "new"
    with pytest.raises(ConfigError, match=r"p\.json exists and is not a control vector imported before; it is not "
                                          r"replaced"):
        import_target(tmp_path / "p", "happy.gguf")  # extracted directions are never overwritten by an import


# ============================================================================ the command line
def _cli(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ld = _layer_directions()
    ld.save("persona")
    d = _direction(layer=3)
    d.save("refusal")
    rc, out, err = _cli(["export-vector", "persona", "--out", "persona.gguf", "--model-hint", "qwen2"], capsys)
    assert rc == 0, err
    assert "layers [2, 3, 4] as direction.{1,2,3}" in out and "--control-vector-scaled persona.gguf:1" in out
    rc, out, err = _cli(["import-vector", "persona.gguf", "--out", "imported/"], capsys)
    assert rc == 0, err
    back = LayerDirections.load("imported/persona")
    assert back.layers == (2, 3, 4) and torch.equal(back.vectors, ld.vectors[2:])
    assert back.name == "persona" and back.model_id == ld.model_id and back.position == -2
    # a Direction broadcast, scaled; then imported to a named file, checked against the tiny model
    rc, out, err = _cli(["export-vector", "refusal.json", "--out", "r.gguf", "--model-hint", "qwen2", "--layers", "2-3",
                         "--scale", "2"], capsys)
    assert rc == 0, err
    tensors = _tensors(tmp_path / "r.gguf")
    assert list(tensors) == ["direction.1", "direction.2"]
    assert all(v.tobytes() == (d.vector * 2).numpy().tobytes() for v in tensors.values())
    rc, out, err = _cli(["import-vector", "r.gguf", "--out", "mine.json", "--model", "tiny"], capsys)
    assert rc == 0, err
    assert LayerDirections.load("mine").layers == (2, 3)
    rc, out, err = _cli(["import-vector", "r.gguf", "--out", "mine"], capsys)  # its own earlier import: replaced
    assert rc == 0, err
    rc, out, err = _cli(["export-vector", "mine", "--out", "r.gguf", "--model", "tiny", "--layers", "3"], capsys)
    assert rc == 0, err  # an imported vector exported again: the hint recorded at import is kept
    assert list(_tensors(tmp_path / "r.gguf")) == ["direction.2"]
    assert _kv(gguf.GGUFReader(tmp_path / "r.gguf"))["controlvector.model_hint"] == "qwen2"


@pytest.fixture
def cli_inputs(tmp_path) -> Path:
    """The files the bad-input cases of ``CONTROL_VECTOR_CASES`` name."""
    _direction(layer=1).save(tmp_path / "early")
    _direction(layer=3).save(tmp_path / "refusal")
    _direction(layer=3, hook_name="blocks.3.hook_attn_out").save(tmp_path / "attn")
    _layer_directions().save(tmp_path / "persona")
    _write(tmp_path / "model.gguf", {"token_embd.weight": F32}, arch="qwen2")
    _write(tmp_path / "narrow.gguf", {"direction.1": np.ones(32, np.float32)})
    _write(tmp_path / "zero.gguf", {"direction.0": F32})
    (tmp_path / "notes.txt").write_text("mine")
    return tmp_path


@pytest.mark.parametrize("case, argv, expected", CONTROL_VECTOR_CASES, ids=[c[0] for c in CONTROL_VECTOR_CASES])
def test_cli_bad_input_is_one_line(cli_inputs, capsys, monkeypatch, case, argv, expected):
    monkeypatch.chdir(cli_inputs)
    before = {p.name: p.read_bytes() for p in cli_inputs.iterdir() if p.is_file()}
    rc, out, err = _cli(argv, capsys)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(expected, lines[0]), f"\n{lines[0]}\n{expected}"
    assert {p.name: p.read_bytes() for p in cli_inputs.iterdir() if p.is_file()} == before  # nothing written
    assert not (cli_inputs / "out").exists()
