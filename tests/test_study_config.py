"""persona_refusal.study.config and study.gating.config: sections, flat routing, one table of field checks, derived flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import no_typecheck
from persona_refusal.errors import ConfigError
from persona_refusal.study.config import Check, add_flags, flags_to_fields, layer_spec, resolve_device
from persona_refusal.study.gating.config import PRESETS, SECTIONS, StudyConfig, SteeringConfig


def test_flat_and_sectioned_construction_agree():
    a = StudyConfig(model="tiny", persona_alpha=2.0, n_train=8)
    b = StudyConfig(model="tiny", steering=SteeringConfig(persona_alpha=2.0), prompts={"n_train": 8})
    assert a == b
    assert a.steering.persona_alpha == a.persona_alpha == 2.0
    a.persona_alpha = 4.0  # flat writes land in the section
    assert a.steering.persona_alpha == 4.0 and a != b


def test_field_names_are_unique_across_sections():
    names = [f.name for s in SECTIONS for f in dataclasses.fields(s)]
    assert len(names) == len(set(names))
    assert set(StudyConfig.field_names()) == {"model", "chat_template", "bootstrap", "seed", "batch_size", *names}


def test_nested_and_flat_round_trips():
    cfg = StudyConfig.preset("full", model="tiny", seed=3)
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg
    assert StudyConfig.from_dict(cfg.to_flat()) == cfg
    assert json.loads(json.dumps(cfg.to_dict()))["steering"]["persona_alpha"] == 3.0
    assert set(cfg.to_flat()) == set(StudyConfig.field_names())


def test_flat_record_is_the_schema_1_config():
    """results.json of schema 1 (the committed demo run) reads back to the same flat record."""
    old = json.loads((Path(__file__).parents[1] / "figures" / "results.json").read_text())["config"]
    flat = StudyConfig.from_dict(old).to_flat()
    assert {k: flat[k] for k in old} == old
    # fields added since read back as the old run's protocol: their defaults, or the value
    # StudyConfig.LEGACY says an older record meant (a default that changed)
    assert {k: v for k, v in flat.items() if k not in old} == {
        k: StudyConfig.LEGACY.get(k, v) for k, v in StudyConfig().to_flat().items() if k not in old}
    assert flat["persona_balance"] == "first_k" != StudyConfig().persona_balance


def test_legacy_fields_read_back_nested_and_flat():
    """A record without a field whose default changed reads back as the value it meant, whether
    given flat or by section; a record that names the field keeps it."""
    flat = StudyConfig(model="tiny").to_flat()
    del flat["persona_balance"]
    assert StudyConfig.from_dict(flat).persona_balance == "first_k"
    nested = StudyConfig(model="tiny").to_dict()
    del nested["persona"]["persona_balance"]
    assert StudyConfig.from_dict(nested).persona_balance == "first_k"
    assert StudyConfig.from_dict(StudyConfig(model="tiny", persona_balance="rollout").to_flat()).persona_balance \
        == "rollout"


@pytest.mark.parametrize("fields, message", [
    ({"n_sweep": "many"}, "n_sweep must be an integer, got 'many'"),
    ({"n_train": 0}, "n_train must be at least 1, got 0"),
    ({"seed": -1}, "seed -1 is out of range"),
    ({"seed": 2**70}, "is out of range"),
    ({"persona_alpha": 1e30}, "persona_alpha 1e+30 is out of range"),
    ({"persona_alpha": float("nan")}, "persona_alpha must be finite"),
    ({"kl_threshold": "a"}, "kl_threshold must be a number, got 'a'"),
    ({"betas": []}, "betas must hold at least one strength"),
    ({"alphas": 3}, "alphas must be a list of strengths, got 3"),
    ({"betas": [2.0, float("inf")]}, "betas holds a non-finite strength inf"),
    ({"norm": "l2"}, "unknown norm 'l2'"),
    ({"persona_layer": 2.5}, "persona_layer must be an integer, got 2.5"),
    ({"gating_layers": 5}, "gating_layers must be a list of integers, got 5"),
    ({"gating_layers": "every:0"}, "every:0 needs a step of at least 1"),
    ({"control_layers": "sometimes"}, "cannot read layer spec 'sometimes'"),
    ({"knockout_starts": "x"}, "knockout_starts must be a list of integers"),
    ({"knockout_window": 0}, "knockout_window must be at least 1, got 0"),
    ({"selection_positions": [0]}, "must be negative, got 0"),
    ({"allow_transfer": "yes"}, "allow_transfer must be true or false"),
    ({"n_trian": 4}, "unknown configuration field 'n_trian' (did you mean 'n_train'?"),
    ({"steering": {"n_train": 4}}, "n_train is not a field of section steering"),
    ({"dtype": "float8"}, "unknown dtype 'float8' (use float32, bfloat16, float16)"),
    ({"device": "gpu"}, "unknown device 'gpu' (use auto, cpu, cuda, cuda:N or mps)"),
    ({"device": 0}, "unknown device 0"),
    ({"compute": {"device": "cuda:x"}}, "unknown device 'cuda:x'"),
])
def test_every_bad_field_is_a_one_line_config_error(fields, message):
    with no_typecheck(), pytest.raises(ConfigError) as e:
        StudyConfig(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_device_and_decoding_mode_are_not_part_of_a_runs_identity_and_the_dtype_is():
    a = StudyConfig(model="tiny", device="cpu")
    assert a.identity() == StudyConfig(model="tiny", device="cuda:1").identity()
    assert a.identity() == StudyConfig(model="tiny", decode="reference").identity()
    # the chat template given for a base model is in the model's fingerprint instead
    assert set(a.to_flat()) - set(a.identity()) == {"device", "decode", "chat_template"}
    assert a.identity()["dtype"] == "float32"
    assert StudyConfig(model="tiny", dtype="bfloat16").identity() != a.identity()
    assert StudyConfig.from_dict(a.identity()) == StudyConfig(model="tiny")  # the device reads back as auto


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available: torch \S+ finds no CUDA GPU on this "
                                          r"machine \(use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match=r"this machine has 1 CUDA device \(use cuda:0\.\.cuda:0\)"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_resolve_derives_layers_from_depth():
    r = StudyConfig().resolve(24)
    assert r["persona_layer"] == 16 and r["gating_layers"] == list(range(24))
    assert r["control_layers"] == list(range(0, 24, 2)) and r["knockout_window"] == 4
    assert r["selection_layers"] == [0, 3, 6, 9, 12, 15, 18]
    with pytest.raises(ConfigError, match="gating_layers \\[30\\] out of range"):
        StudyConfig(gating_layers=[0, 30]).resolve(24)


def test_layer_spec():
    assert layer_spec("x", "every:4,from:8", 24) == [8, 12, 16, 20]
    assert layer_spec("x", "below:0.25", 8) == [0, 1]
    assert layer_spec("x", None, 4, "all") == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        layer_spec("x", "below:nan", 4)


def test_flags_are_derived_from_the_fields():
    p = argparse.ArgumentParser()
    add_flags(p, StudyConfig)
    args = p.parse_args(["--persona-alpha", "2", "--gating-layers", "every:2", "--betas", "1,2", "--allow-transfer",
                         "--heatmap-persona-layers", "3,5"])
    assert flags_to_fields(args, StudyConfig) == {"persona_alpha": 2.0, "gating_layers": "every:2", "betas": [1.0, 2.0],
                                     "allow_transfer": True, "heatmap_persona_layers": [3, 5]}
    offered = {a.dest for a in p._actions}
    assert {n for n in StudyConfig.field_names() if StudyConfig.check_of(n).flag} <= offered


def test_presets_hold_only_known_fields():
    for name, preset in PRESETS.items():
        assert set(preset.overrides) <= set(StudyConfig.field_names()), name
        StudyConfig.preset(name)
    with pytest.raises(ConfigError, match="unknown preset"):
        StudyConfig.preset("nope")


def test_check_accepts_none_only_when_optional():
    Check("int", optional=True).check("n", None)
    with pytest.raises(ConfigError, match="must be set"):
        Check("int").check("n", None)
