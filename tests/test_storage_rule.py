"""The storage rule and the checked reader (persona_refusal.storage), generated cases.

Every writer of the package goes through :func:`atomic_open` and every output path a
command is given through :func:`check_output`; every user file through
:func:`read_user_bytes` and its JSON reader. These tests throw each kind of bad path
(a link to a victim file, a dangling link, a named pipe, a folder, a foreign file, a
parent that is a file, a trailing slash) and seeded random contents at them, and check
the one-line refusal and that nothing outside was touched.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from clitools import bad_path
from persona_refusal.errors import ConfigError, RunFolderError
from persona_refusal.storage import (MANIFEST, MAX_JSON_DEPTH, atomic_write_text, check_fields, check_output,
                                     claim_folder, file_kind, json_depth, open_nofollow, read_user_bytes,
                                     read_user_json, read_user_text, write_json)
from persona_refusal.study.store import LOCK, RunStore

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and symlinks (POSIX)")

SEED = 20261205
BAD_KINDS = ["symlink", "dangling symlink", "fifo", "folder", "foreign file", "parent is a file", "trailing slash"]


def _snapshot(folder: Path) -> dict[str, object]:
    """Every entry below ``folder``: a file's bytes, a link's target, a pipe or folder's kind."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        kind = file_kind(p)
        out[rel] = ("link", os.readlink(p)) if kind == "a symbolic link" else \
            p.read_bytes() if kind == "file" else kind
    return out


def make_bad(kind: str, work: Path, name: str = "target.json") -> Path:
    """A path of ``kind`` in ``work`` (and a victim file elsewhere in ``work`` where a link points)."""
    victim = work / "victim.txt"
    victim.write_text("the user's file\n")
    if kind == "trailing slash":
        return Path(str(work / "newdir") + "/")
    return bad_path(kind, work, name, victim) or work / name


@pytest.fixture(autouse=True)
def _alarm():
    """A pipe that blocks fails the test instead of hanging it."""
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("blocked (a named pipe?)")))
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_check_output_refuses_every_bad_path_in_one_line(tmp_path, kind):
    p = make_bad(kind, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as e:
        check_output(p if kind != "trailing slash" else str(p) + ("" if str(p).endswith("/") else "/"),
                     flag="--out", ours=lambda q: False, writer="persona-refusal test")
    line = str(e.value)
    assert "\n" not in line and ("--out" in line or "cannot create" in line), line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "folder"])
def test_atomic_writes_never_go_through_what_they_did_not_make(tmp_path, kind):
    p = make_bad(kind, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match="writes only regular files"):
        write_json(p, {"a": 1})
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "nowhere").exists()


def test_check_output_replaces_only_its_own_files(tmp_path):
    ours = tmp_path / "record.json"
    write_json(ours, {"format": "mine/1"})
    mark = lambda q: read_user_json(q).get("format") == "mine/1"  # noqa: E731
    assert check_output(ours, ours=mark) == ours
    (tmp_path / "other.json").write_text('{"format": "theirs/1"}')
    with pytest.raises(ConfigError, match="was not written by"):
        check_output(tmp_path / "other.json", ours=mark)
    assert check_output(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new" / "deeper" / "x.json"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_the_run_lock_is_never_opened_through_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / LOCK).symlink_to(victim)
    with pytest.raises(RunFolderError, match=r"\.lock is a symbolic link"):
        RunStore(run, {"config": 1})
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in run.iterdir()) == [LOCK]
    with pytest.raises(ConfigError, match="symbolic link"):
        open_nofollow(run / LOCK)


@pytest.mark.parametrize("entry", ["config.json", "checkpoints", "results.json", MANIFEST])
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_run_folder_with_a_planted_link_or_pipe_is_refused(tmp_path, entry, kind):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir() if entry == "checkpoints" else victim.write_text("precious\n")
    (run / entry).symlink_to(victim) if kind == "symlink" else os.mkfifo(run / entry)
    before = _snapshot(tmp_path)
    with pytest.raises(RunFolderError) as e:
        RunStore(run, {"config": 1})
    assert "\n" not in str(e.value) and entry in str(e.value)
    assert _snapshot(tmp_path) == before


def test_force_removes_only_listed_files_generated(tmp_path):
    """Seeded: files the run wrote and files a user added, at random places of the owned
    folders; --force removes exactly the former."""
    rng = random.Random(SEED)
    for trial in range(6):
        run = tmp_path / f"run{trial}"
        with RunStore(run, {"config": 1}) as store:
            store.put("eval", "a", 1)
            written = {f"{rng.choice(['directions', 'checkpoints', 'figures'])}/w{i}.json" for i in range(rng.randint(1, 5))}
            for rel in written:
                write_json(run / rel, {"i": rel})
        users = {f"{rng.choice(['directions', 'checkpoints', 'figures', 'elsewhere'])}/u{i}.txt"
                 for i in range(rng.randint(1, 4))}
        for rel in users:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text("mine\n")
        with RunStore(run, {"config": 2}, force=True):
            pass
        for rel in written:
            assert not (run / rel).exists(), rel
        for rel in users:
            assert (run / rel).read_text() == "mine\n", rel


def test_claim_folder_refuses_a_study_run_and_foreign_files(tmp_path):
    run = tmp_path / "run"
    RunStore(run, {"config": 1}).close()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match="another kind"):
        claim_folder(run, "persona_refusal.demo/1", ["results.json"], what="the ablation demo")
    with pytest.raises(ConfigError, match="did not write"):
        claim_folder(foreign, "persona_refusal.demo/1", ["results.json"], what="the ablation demo")
    assert _snapshot(tmp_path) == before
    mine = claim_folder(tmp_path / "demo", "persona_refusal.demo/1", ["results.json"], what="the ablation demo")
    write_json(mine / "results.json", {})
    assert claim_folder(mine, "persona_refusal.demo/1", ["results.json"], what="the ablation demo") == mine
    assert json.loads((mine / MANIFEST).read_text())["files"] == ["results.json"]


# ============================================================================ the checked reader
@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink to a fifo", "missing"])
def test_reader_refuses_what_is_not_a_regular_file_without_blocking(tmp_path, kind):
    p = bad_path(kind, tmp_path, "in.json", tmp_path / "victim") or tmp_path / "in.json"
    with pytest.raises(ConfigError) as e:
        read_user_json(p, what="cases file", flag="--cases")
    assert "\n" not in str(e.value) and "in.json" in str(e.value)


def test_reader_accepts_a_byte_order_mark_and_bounds_nesting_generated(tmp_path):
    rng = random.Random(SEED)
    for i in range(40):
        depth = rng.choice([1, 2, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, rng.randint(1, 50_000)])
        opener, closer = rng.choice([("[", "]"), ('{"k":', "}")])
        text = opener * depth + rng.choice(["1", '"[[{"', "null"]) + closer * depth
        bom = rng.random() < 0.5
        p = tmp_path / f"c{i}.json"
        p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        assert json_depth(text) == depth
        if depth > MAX_JSON_DEPTH:
            with pytest.raises(ConfigError, match="nested too deeply"):
                read_user_json(p, what="config file")
        else:
            assert read_user_json(p, what="config file") == json.loads(text)
    assert read_user_text(p) == text


def test_reader_checks_field_types_generated():
    rng = random.Random(SEED)
    values = [None, True, 3, 2.5, "x", [], {}, [1], {"a": 1}]
    for _ in range(200):
        v = rng.choice(values)
        want = rng.choice([dict, list, str, int, float, bool])
        data = {"config": {"judge": v}}
        ok = isinstance(v, want) and not (isinstance(v, bool) and want is not bool) or \
            (want is float and isinstance(v, int) and not isinstance(v, bool))
        if ok:
            assert check_fields(data, {"config.judge": want}, where="f") is data
        else:
            with pytest.raises(ConfigError, match=r"f: field 'config\.judge' is "):
                check_fields(data, {"config.judge": want}, where="f")


def test_reader_bounds_the_size(tmp_path):
    p = tmp_path / "big.txt"
    p.write_bytes(b"x" * 2048)
    with pytest.raises(ConfigError, match="more than the 1024"):
        read_user_bytes(p, limit=1024)
    assert read_user_bytes(p, limit=4096) == b"x" * 2048


def test_writes_in_a_claimed_folder_are_listed_only_below_owned_entries(tmp_path):
    run = tmp_path / "run"
    RunStore(run, {"config": 1}).close()
    atomic_write_text(run / "directions" / "d.json", "{}")
    atomic_write_text(run / "judge_agreement.json", "{}")  # not a run entry: the agreement's own file
    files = json.loads((run / MANIFEST).read_text())["files"]
    assert "directions/d.json" in files and "judge_agreement.json" not in files
