"""persona_refusal.study.store: the run folder — atomic checkpoints, ownership (``--force``
removes only what a run wrote), one run at a time (the folder lock), damaged files recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import persona_refusal as pr
from persona_refusal.directions import Direction
from persona_refusal.study import RunStore, Study, StudyConfig, run_study
from persona_refusal.study import store as store_module
from persona_refusal.storage import write_json
from persona_refusal.study.store import LOCK, MANIFEST

SMOKE = dict(n_train=8, n_val=4, n_eval=6, n_sweep=4, n_coherence=2, alphas=[1.0, 3.0], persona_questions=2)
"""The smoke preset, trimmed further: every stage runs, in a few seconds on the tiny model."""


def _config(**overrides) -> StudyConfig:
    return StudyConfig.preset("smoke", model="tiny", **{**SMOKE, **overrides})


def _without_run_info(results) -> dict:
    return {k: v for k, v in dict(results).items() if k != "run_info"}


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``, byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(folder: Path) -> dict[str, bytes]:
    """A folder of a researcher's own files with run-like names, never written by a run."""
    (folder / "directions").mkdir(parents=True)
    Direction(vector=torch.arange(1.0, 65.0), layer=1, name="mine").save(folder / "directions" / "mine")
    (folder / "results.json").write_text('{"my": "results"}\n')
    (folder / "notes.txt").write_text("keep me\n")
    return _tree(folder)


# ============================================================================ checkpoints
def test_put_many_is_all_or_nothing(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "run", {"config": 1})
    store.put("eval", "a", {"x": 1.0})
    before = (store.ckpt / "eval.json").read_bytes()

    def broken(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "write_json", broken)
    with pytest.raises(KeyboardInterrupt):
        store.put_many("eval", {"b": {"x": 2.0}, "c": {"x": 3.0}})
    assert not store.has("eval", "b") and not store.has("eval", "c")  # the in-memory view did not run ahead
    assert (store.ckpt / "eval.json").read_bytes() == before
    monkeypatch.undo()
    saved = store.put_many("eval", {"b": {"x": float("nan")}, "c": {"x": 3.0}})
    assert saved["b"] == {"x": None}  # as it reads back from the file: a fresh and a resumed run agree
    store.close()
    with RunStore(tmp_path / "run", {"config": 1}) as again:
        assert again.get("eval", "b") == {"x": None}


def test_run_folder_with_another_configuration_needs_force(tmp_path):
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        store.put("eval", "a", 1)
    with pytest.raises(pr.RunFolderError, match=r"different configuration \(changed: config\).*--force"):
        RunStore(tmp_path / "run", {"config": 2})
    assert (tmp_path / "run" / "checkpoints" / "eval.json").exists()  # nothing was lost by the refusal
    with RunStore(tmp_path / "run", {"config": 2}, force=True) as store:
        assert not store.has("eval", "a") and not store.resumed


@pytest.mark.parametrize("damage", [b'{"a": [1, 2', b"", b"[1, 2]", b"\xff\xfe not utf-8"],
                         ids=["truncated", "empty", "list", "binary"])
def test_damaged_checkpoint_is_dropped_with_a_warning(tmp_path, caplog, damage):
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        store.put("eval", "a", 1)
        store.put("gating", "b", 2)
    (tmp_path / "run" / "checkpoints" / "gating.json").write_bytes(damage)
    with caplog.at_level(logging.WARNING), RunStore(tmp_path / "run", {"config": 1}) as store:
        assert store.count("gating") == 0 and not store.has("gating", "b")
        assert store.get("eval", "a") == 1  # the other stages are kept
        assert not (store.ckpt / "gating.json").exists()
        store.put("gating", "b", 3)
        assert json.loads((store.ckpt / "gating.json").read_text()) == {"b": 3}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint gating" in warning and str(tmp_path / "run" / "checkpoints" / "gating.json") in warning


def test_read_back_removes_damaged_files_for_recomputation(tmp_path, caplog):
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        d = Direction(vector=torch.ones(4), layer=1, name="r")
        d.save(tmp_path / "run" / "directions" / "r")
        files = [tmp_path / "run" / "directions" / f"r{ext}" for ext in (".json", ".safetensors")]
        load = lambda: Direction.load(tmp_path / "run" / "directions" / "r")  # noqa: E731
        assert torch.equal(store.read_back("r", files, load).vector, d.vector)
        assert store.read_back("absent", [tmp_path / "run" / "nothing.json"], load) is None  # no file: no warning
        files[1].write_bytes(files[1].read_bytes()[:20])  # truncated tensors
        with caplog.at_level(logging.WARNING):
            assert store.read_back("r", files, load) is None
        assert not any(f.exists() for f in files)
        assert "r in" in caplog.text and "damaged" in caplog.text


# ============================================================================ ownership
def test_a_new_run_folder_records_what_the_run_owns(tmp_path):
    with RunStore(tmp_path / "run", {"config": 1}):
        manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert set(manifest["owned"]) == set(store_module.RUN_ENTRIES)
    assert not (tmp_path / "run" / LOCK).exists()


def test_force_removes_only_what_the_run_owns(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    (run / "data").mkdir()
    (run / "data" / "x.csv").write_text("a,b\n")
    with RunStore(run, {"config": 1}) as store:
        store.put("eval", "a", 1)
        write_json(run / "directions" / "refusal.json", {})  # written by the package: listed in the manifest
        write_json(run / "results.json", {})
    (run / "directions" / "my_notes.txt").write_text("mine too\n")  # a user's file inside a run folder
    assert sorted(json.loads((run / MANIFEST).read_text())["files"]) == [
        "checkpoints/eval.json", "config.json", "directions/refusal.json", "results.json"]
    with RunStore(run, {"config": 2}, force=True):
        pass
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "data" / "x.csv").read_text() == "a,b\n"
    assert not (run / "directions" / "refusal.json").exists() and not (run / "results.json").exists()
    assert (run / "directions" / "my_notes.txt").read_text() == "mine too\n"
    assert not (run / "checkpoints" / "eval.json").exists()
    assert json.loads((run / "config.json").read_text()) == {"config": 2}


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_never_held_a_run_is_refused_and_left_as_it_was(tmp_path, force):
    before = _user_folder(tmp_path / "mine")
    with pytest.raises(pr.RunFolderError) as info:
        RunStore(tmp_path / "mine", {"config": 1}, force=force)
    assert str(info.value) == (f"{tmp_path / 'mine'} holds directions, results.json but no persona_refusal run "
                               "(use another --out folder: --force only removes what a run of persona_refusal wrote)")
    assert _tree(tmp_path / "mine") == before  # byte for byte; no manifest, no lock left


def test_results_without_a_configuration_are_refused(tmp_path):
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "results.json").write_text('{"schema": "persona_refusal.gating/1"}\n')
    (tmp_path / "figs" / "gating.png").write_bytes(b"\x89PNG")
    before = _tree(tmp_path / "figs")
    with pytest.raises(pr.RunFolderError, match="holds results.json but no persona_refusal run"):
        RunStore(tmp_path / "figs", {"config": 1})
    assert _tree(tmp_path / "figs") == before


def test_a_run_of_a_version_before_manifests_is_adopted(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    record = {"config": {"seed": 0}, "inputs": {}, "resolved": {}, "model": {}}
    (run / "config.json").write_text(json.dumps(record))
    (run / "checkpoints" / "eval.json").write_text('{"a": 1}')
    (run / "notes.txt").write_text("mine\n")
    with RunStore(run, record) as store:
        assert store.resumed and store.get("eval", "a") == 1
    assert (run / MANIFEST).is_file()
    with RunStore(run, {**record, "config": {"seed": 1}}, force=True) as store:
        assert not store.has("eval", "a")
    assert (run / "notes.txt").read_text() == "mine\n"


def test_a_first_force_on_a_run_of_a_version_before_manifests_removes_only_run_files(tmp_path):
    run = tmp_path / "old"
    for d in ("checkpoints", "directions", "figures/extra"):
        (run / d).mkdir(parents=True)
    record = {"config": {"seed": 0}, "inputs": {}, "resolved": {}, "model": {}}
    (run / "config.json").write_text(json.dumps(record))
    written = ["checkpoints/eval.json", "directions/refusal.safetensors", "directions/refusal.json",
               "figures/gating.html", "figures/gating.png", "figures/plotly.min.js", "results.json", "report.html"]
    mine = ["checkpoints/notes.txt", "directions/my_direction.pt", "figures/extra/draft.svg", "figures/README"]
    for rel in written + mine:
        (run / rel).write_text(rel)
    with RunStore(run, {**record, "config": {"seed": 1}}, force=True) as store:
        assert not store.has("eval", "a")
    assert not any((run / rel).exists() for rel in written)
    assert all((run / rel).read_text() == rel for rel in mine)


def test_force_keeps_the_inputs_it_was_handed(tmp_path):
    run = tmp_path / "run"
    with RunStore(run, {"config": 1}):
        Direction(vector=torch.ones(4), layer=1, name="r").save(run / "directions" / "refusal")
        write_json(run / "directions" / "other.json", {})  # written by the run (listed in its manifest)
    kept = {p.name: p.read_bytes() for p in (run / "directions").glob("refusal.*")}
    with RunStore(run, {"config": 2}, force=True, keep=[run / "directions" / n for n in kept]):
        pass
    assert {p.name: p.read_bytes() for p in (run / "directions").glob("refusal.*")} == kept
    assert not (run / "directions" / "other.json").exists()


# ============================================================================ the lock
def test_a_folder_is_locked_while_a_store_is_open(tmp_path):
    store = RunStore(tmp_path / "run", {"config": 1})
    assert store.locked and (tmp_path / "run" / LOCK).read_text().strip() == str(os.getpid())
    with pytest.raises(pr.RunFolderError, match=rf"run is in use by process {os.getpid()} \(this process"):
        RunStore(tmp_path / "run", {"config": 1})
    assert not store.has("x", "y")  # the refused store did not disturb the open one
    store.close()
    store.close()  # idempotent
    assert not store.locked and not (tmp_path / "run" / LOCK).exists()
    store.put("eval", "a", 1)  # still usable, unlocked
    with RunStore(tmp_path / "run", {"config": 1}) as again:
        assert again.get("eval", "a") == 1


def test_a_store_that_is_dropped_releases_the_lock(tmp_path):
    RunStore(tmp_path / "run", {"config": 1}).put("eval", "a", 1)
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        assert store.get("eval", "a") == 1


def test_a_stale_lock_file_is_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text("999999999\n")  # left by a process killed with -9
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        assert store.locked and (tmp_path / "run" / LOCK).read_text().strip() == str(os.getpid())


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from persona_refusal.study.store import RunStore
        store = RunStore({str(tmp_path / 'run')!r}, {{"config": 1}})
        print("locked", flush=True)
        sys.stdin.read()
        store.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(pr.RunFolderError) as info:
            RunStore(tmp_path / "run", {"config": 1})
        assert str(info.value) == (f"{tmp_path / 'run'} is in use by process {holder.pid} (another persona-refusal "
                                   "run writes there: wait for it to finish, or use another --out folder)")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with RunStore(tmp_path / "run", {"config": 1}) as store:
        assert store.locked


# ============================================================================ the study
@pytest.fixture(scope="module")
def clean(tiny, tmp_path_factory):
    """A clean study run: its folder and results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("clean") / "run"
        return out, run_study(_config(), out, chat_model=tiny, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_a_study_releases_the_lock_when_it_ends_or_fails(tiny, clean, tmp_path, monkeypatch):
    out, _ = clean
    assert not (out / LOCK).exists()
    study = Study(tiny, _config(), tmp_path / "run", progress=False, stages=["refusal"])
    assert study.store.locked
    from persona_refusal.study import context

    def failing(cm, *args, **kwargs):
        raise RuntimeError("stopped")

    monkeypatch.setattr(context, "extract_directions", failing)  # the refusal stage's grid (RunContext.diff_in_means_grid)
    with pytest.raises(RuntimeError, match="stopped"):
        study.run()
    assert not study.store.locked and not (tmp_path / "run" / LOCK).exists()
    with pytest.raises(pr.ConfigError):  # an unknown stage fails before the folder is locked
        Study(tiny, _config(), tmp_path / "run", progress=False, stages=["no_such_stage"])
    assert not (tmp_path / "run" / LOCK).exists()


@pytest.mark.parametrize("force", [False, True])
def test_damaged_checkpoints_and_directions_are_recomputed_to_the_clean_results(tiny, clean, tmp_path, caplog, force):
    src, reference = clean
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "directions").mkdir()
    for p in [src / "config.json", *(src / "checkpoints").iterdir(), *(src / "directions").iterdir()]:
        (out / p.relative_to(src)).write_bytes(p.read_bytes())
    ck = sorted((out / "checkpoints").glob("*.json"))
    ck[0].write_bytes(ck[0].read_bytes()[: len(ck[0].read_bytes()) // 2])  # truncated
    ck[1].write_bytes(b"")
    ck[2].write_text("[1, 2, 3]")
    rs = out / "directions" / "refusal.safetensors"
    rs.write_bytes(rs.read_bytes()[:-9])
    (out / "directions" / "persona.json").write_text("{not json")
    (out / "directions" / "refusal_grid.json").write_text("[]")
    torch.set_num_threads(1)
    with caplog.at_level(logging.WARNING):
        again = run_study(_config(), out, chat_model=tiny, progress=False, force=force)
    assert _without_run_info(again) == _without_run_info(reference)
    assert _tree(out / "directions") == _tree(src / "directions")
    for p in ck[:3]:
        assert str(p) in caplog.text
    assert "refusal.safetensors" in caplog.text and "persona.json" in caplog.text and "refusal_grid" in caplog.text


def test_a_given_direction_inside_the_run_folder_survives_force(tiny, clean, tmp_path):
    src, reference = clean
    out = tmp_path / "run"
    run_study(_config(), out, chat_model=tiny, progress=False)
    given = {p.name: p.read_bytes() for p in (out / "directions").glob("refusal.*")}
    cfg = _config(refusal_direction=str(out / "directions" / "refusal"), persona_alpha=2.0)
    with pytest.raises(pr.RunFolderError, match="different configuration"):
        run_study(cfg, out, chat_model=tiny, progress=False)
    forced = run_study(cfg, out, chat_model=tiny, progress=False, force=True)
    assert {p.name: p.read_bytes() for p in (out / "directions").glob("refusal.*")} == given
    assert forced["refusal_direction"]["layer"] == reference["refusal_direction"]["layer"]
    assert json.loads((out / "directions" / "refusal_selection.json").read_text())["settings"] == {"given": True}
    resumed = run_study(cfg, out, chat_model=tiny, progress=False)  # not stuck: the same command resumes
    assert resumed["run_info"]["resumed"] is True
    assert _without_run_info(resumed) == _without_run_info(forced)
