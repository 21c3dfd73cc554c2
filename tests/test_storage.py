"""storage: atomic writes, canonical JSON, safetensors round trips and sha256 helpers."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from persona_refusal import storage


def test_atomic_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    storage.atomic_write_bytes(target, b"first")
    storage.atomic_write_bytes(target, b"second")
    storage.atomic_write_text(tmp_path / "sub" / "t.txt", "héllo")
    assert target.read_bytes() == b"second"
    assert (tmp_path / "sub" / "t.txt").read_bytes() == "héllo".encode("utf-8")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.bin", "t.txt"]


def test_failed_atomic_write_keeps_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    storage.write_json(target, {"a": 1})
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise KeyboardInterrupt  # Ctrl-C at the worst moment

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        storage.write_json(target, {"a": 2})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_json_is_canonical(tmp_path):
    a = storage.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "c": {"z": 0, "y": 1}})
    b = storage.write_json(tmp_path / "b.json", {"c": {"y": 1, "z": 0}, "a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    assert text.index('"a"') < text.index('"b"') < text.index('"c"') and text.endswith("\n")


def test_write_json_converts_values(tmp_path):
    obj = {
        "nan": float("nan"),
        "inf": float("inf"),
        "tensor": torch.tensor([[1.5, 2.0]]),
        "scalar": torch.tensor(3),
        "path": Path("x/y"),
        "tuple": (1, (2, 3)),
        "nested": [float("-inf"), {"k": float("nan")}],
        1: "int key",
    }
    path = storage.write_json(tmp_path / "v.json", obj)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert storage.read_json(path) == {
        "nan": None,
        "inf": None,
        "tensor": [[1.5, 2.0]],
        "scalar": 3,
        "path": "x/y",
        "tuple": [1, [2, 3]],
        "nested": [None, {"k": None}],
        "1": "int key",
    }


def test_canonical_json_compact_form():
    assert storage.canonical_json({"b": [1, 2], "a": None}, indent=None) == '{"a": null, "b": [1, 2]}\n'


def test_tensor_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "i64": torch.arange(6).reshape(2, 3),
        "transposed": torch.randn(4, 3, generator=g).T,  # not contiguous
        "bf16": torch.randn(2, 2, generator=g).to(torch.bfloat16),
    }
    path = storage.write_tensors(tmp_path / "t.safetensors", tensors, metadata={"format": "test"})
    back = storage.read_tensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_sha256_helpers(tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert storage.sha256_bytes(data) == expected
    assert storage.sha256_file(path) == expected
    assert storage.sha256_file(path, chunk=777) == expected  # streamed in odd-sized chunks
    # sha256_json hashes the compact canonical form: key order does not matter.
    assert storage.sha256_json({"b": 1, "a": [1.0, math.nan]}) == storage.sha256_json({"a": [1.0, None], "b": 1})
    assert storage.sha256_json(["a", "b"]) == hashlib.sha256(b'["a", "b"]\n').hexdigest()
    assert storage.sha256_json(["a", "b"]) != storage.sha256_json(["b", "a"])
    assert json.loads(storage.canonical_json(["a", "b"])) == ["a", "b"]
