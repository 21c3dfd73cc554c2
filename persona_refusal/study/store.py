"""The run folder: the configuration record, per-point checkpoints, all written atomically.

Context
-------
A study writes into one folder: ``config.json`` (what defines the run: configuration,
input checksums, resolved layers, model fingerprint, prompt sets), ``checkpoints/STAGE.json``
(every completed sweep point, keyed), ``directions/`` and finally ``results.json``. A folder
holding the same configuration resumes where it stopped; every write goes through
:mod:`persona_refusal.storage` (temporary file, fsync, rename), so an interrupted run never
leaves a half-written file, and a resumed run reads back exactly what a fresh run saved.

Nothing lost
------------
* **Ownership.** The first time a run claims a folder it writes ``.persona_refusal_run.json``,
  the list of the entries of :data:`RUN_ENTRIES` the run owns there (all of them: a folder
  that already holds one of those names without being a run is refused). ``--force``
  removes only those entries, never anything else in the folder, and never a file the
  command was handed as input (``keep``). A folder written by an older version (a
  ``config.json`` run record, no manifest) is adopted as a run; until its manifest lists files,
  ``--force`` removes from its folders only the files a run writes there (``*.json`` checkpoints,
  direction files, figure pages and PNGs). Every file written below an
  owned entry is added to the manifest's ``files`` (:func:`persona_refusal.storage.note_written`),
  and inside the owned folders (``checkpoints/``, ``directions/``, ``figures/``) ``--force``
  removes only those files: a file a user put there is kept.
* **No links.** The lock file is opened without following links; an owned entry that is a
  link, a pipe or a device is refused before anything is written.
* **One run at a time.** The store holds an exclusive ``flock`` on ``OUT/.lock`` (the
  holder's pid inside) from opening to :meth:`RunStore.close`; a second store on the folder,
  in this process or another, gets a one-line :class:`RunFolderError`. The kernel releases
  the lock of a process that dies, so a stale ``.lock`` is simply taken over.
* **Damage.** A checkpoint that does not read back as a JSON object is dropped with a
  warning and its stage recomputed; :meth:`RunStore.read_back` does the same for the
  run-written files of a stage (``directions/*``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from persona_refusal.errors import RunFolderError
from persona_refusal.storage import (MANIFEST, canonical_json, check_output, file_kind, manifest_files, open_nofollow,
                                     read_json, write_json)

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["RunStore", "RUN_ENTRIES", "MANIFEST", "LOCK", "read_object"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RUN_ENTRIES = ("checkpoints", "config.json", "directions", "figures", "report.html", "results.json")
"""The top-level names a run writes in its folder (``figures/`` and ``report.html``: the CLI)."""
LOCK = ".lock"
"""Held (``flock``, the holder's pid inside) while a store is open; removed on close."""
_MANIFEST_FORMAT = "persona_refusal.run/1"
_RECORD_KEYS = {"config", "inputs", "resolved", "model"}
"""Keys every ``config.json`` run record has (a folder of an older version is recognised by them)."""
_RUN_FILES = {"checkpoints": ("*.json",), "directions": ("*.json", "*.safetensors"),
              "figures": ("*.html", "*.png", "plotly.min.js")}
"""What a run writes in each of its folders: all that ``--force`` removes from the folders of a
run whose manifest lists no files (one an older version wrote)."""
_DAMAGE = (ValueError, KeyError, TypeError, IndexError, FileNotFoundError)
"""What reading a damaged file raises (bad JSON, not UTF-8, a missing half of a pair, wrong shape)."""


def read_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object (``ValueError`` otherwise)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    return data


class _FolderLock:
    """An exclusive ``flock`` on ``folder/.lock``, with the holder's pid in the file."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self.fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        for _ in range(100):
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644, error=RunFolderError)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = self._holder(fd)
                os.close(fd)
                raise self._busy(folder, holder) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last holder removed while we opened it
                break
            os.close(fd)
        else:  # pragma: no cover
            raise RunFolderError(f"could not lock {folder}", hint="try again")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    @staticmethod
    def _holder(fd: int) -> int | None:
        for _ in range(20):  # the holder writes its pid just after taking the lock
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            if text.isdigit():
                return int(text)
            time.sleep(0.05)
        return None

    @staticmethod
    def _busy(folder: Path, pid: int | None) -> RunFolderError:
        if pid is None:
            return RunFolderError(f"{folder} is in use by another process",
                                  hint="another persona-refusal run writes there: wait for it to finish, "
                                       "or use another --out folder")
        if pid == os.getpid():
            return RunFolderError(f"{folder} is in use by process {pid}",
                                  hint="this process: another Study or RunStore on this folder is still open; "
                                       "let it finish or call its close() first")
        return RunFolderError(f"{folder} is in use by process {pid}",
                              hint="another persona-refusal run writes there: wait for it to finish, "
                                   "or use another --out folder")

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)  # while still held: a waiting process retries on the new file
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # pragma: no cover
            pass


class RunStore:
    """The output folder: configuration, per-point checkpoints and tensors, all atomic.

    Holds the folder's lock until :meth:`close` (or the end of a ``with`` block); the
    store stays readable and writable after it, unlocked.

    Args:
        out: the run folder (created if missing).
        config: the configuration record; a folder holding the same one resumes.
        force: start over in a folder holding a run with a different configuration: the
            entries the run owns (its manifest) are removed first, nothing else.
        keep: files that must survive ``force`` (the inputs the command was handed).
    """

    def __init__(self, out: str | os.PathLike, config: dict, *, force: bool = False,
                 keep: Iterable[str | os.PathLike] = ()) -> None:
        self.out = Path(out)
        self.ckpt = self.out / "checkpoints"
        self.resumed = False
        self._cache: dict[str, dict] = {}
        self._lock: _FolderLock | None = None
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"{self.out} exists and is not a folder", hint="give --out a folder path")
        check_output(self.out, folder=True, error=RunFolderError)
        for name in (*RUN_ENTRIES, MANIFEST, LOCK):
            kind = file_kind(self.out / name)
            if kind not in (None, "file", "a folder"):
                raise RunFolderError(f"{self.out / name} is {kind}; a run writes only regular files and folders "
                                     f"it created", hint="remove it, or use another --out folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _FolderLock(self.out)
        try:
            self._open(config, force, [Path(p) for p in keep])
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- opening
    def _open(self, config: dict, force: bool, keep: list[Path]) -> None:
        cfg_path = self.out / "config.json"
        owned, claim = self._owned()
        if owned is None:
            raise RunFolderError(
                f"{self.out} holds {', '.join(n for n in RUN_ENTRIES if (self.out / n).exists())} "
                f"but no persona_refusal run",
                hint="use another --out folder: --force only removes what a run of persona_refusal wrote")
        if cfg_path.is_file():
            try:
                old = read_json(cfg_path)
            except ValueError:
                old = None
            if old != config:
                if not force:
                    old_d = old if isinstance(old, dict) else {}
                    changed = sorted(k for k in set(old_d) | set(config) if old_d.get(k) != config.get(k))
                    raise RunFolderError(
                        f"{self.out} holds a run with a different configuration (changed: {', '.join(changed[:6])})",
                        hint="use another --out folder, or --force to start over there",
                    )
                self._clear(owned, keep)
            else:
                self.resumed = self.ckpt.is_dir() and any(self.ckpt.iterdir())
        elif force:
            self._clear(owned, keep)
        if claim or manifest_files(self.out) is None:  # only now: a refused folder is left as it was
            files = sorted(str(q.relative_to(self.out).as_posix()) for n in owned if (self.out / n).is_dir()
                           for q in (self.out / n).rglob("*") if file_kind(q) == "file")
            write_json(self.out / MANIFEST, {"format": _MANIFEST_FORMAT, "owned": owned, "files": files,
                                             "note": "written by persona_refusal: --force removes only these "
                                                     "entries of this folder, and in its folders only the files "
                                                     "listed"})
        self.ckpt.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, config)

    def _owned(self) -> tuple[list[str] | None, bool]:
        """The entries this folder's run owns, and whether the manifest is still to be
        written; ``None``: the folder holds run names it did not get from a run."""
        path = self.out / MANIFEST
        if path.is_file():
            try:
                data = read_object(path)
                owned = data["owned"]
                if data.get("format") == _MANIFEST_FORMAT and isinstance(owned, list) and set(owned) <= set(RUN_ENTRIES):
                    return list(owned), False
            except _DAMAGE:
                pass
            log.warning("%s is damaged: deciding from the folder's contents again", path)
        present = [n for n in RUN_ENTRIES if (self.out / n).exists()]
        if present and not self._is_run_record(self.out / "config.json"):
            return None, False
        # an empty folder (or one of other files only), or a run of a version before manifests
        return list(RUN_ENTRIES), True

    @staticmethod
    def _is_run_record(path: Path) -> bool:
        try:
            return _RECORD_KEYS <= set(read_object(path))
        except _DAMAGE:
            return False

    def _clear(self, owned: Iterable[str], keep: list[Path]) -> None:
        """Remove the owned entries, except the files in ``keep`` (and the folders holding them).
        Inside an owned folder only the files the manifest lists are removed. A folder of an
        older version, whose manifest lists no files, loses only the files a run writes there
        (:data:`_RUN_FILES`); anything else in its folders is kept."""
        kept = {p.resolve() for p in keep}
        listed = manifest_files(self.out)
        if listed is not None:
            for rel in listed:
                p = self.out / rel
                if rel.split("/")[0] in owned and ".." not in rel.split("/") and file_kind(p) == "file" \
                        and p.resolve() not in kept:
                    p.unlink()
            for name in owned:
                p = self.out / name
                if file_kind(p) == "a folder":
                    for sub in sorted((q for q in p.rglob("*") if q.is_dir() and not q.is_symlink()), reverse=True):
                        with contextlib.suppress(OSError):
                            sub.rmdir()  # only empty ones
                    with contextlib.suppress(OSError):
                        p.rmdir()
                elif file_kind(p) == "file" and p.resolve() not in kept:
                    p.unlink()
            self._cache.clear()
            return

        for name in owned:
            p = self.out / name
            if p.resolve() in kept:
                log.info("keeping %s: it is an input of this run", p)
            elif file_kind(p) == "file":
                p.unlink()
            elif file_kind(p) == "a folder":
                for q in sorted(p.iterdir()):
                    if file_kind(q) == "file" and q.resolve() not in kept \
                            and any(fnmatch.fnmatch(q.name, pat) for pat in _RUN_FILES.get(name, ())):
                        q.unlink()
                    elif file_kind(q) == "file" and q.resolve() in kept:
                        log.info("keeping %s: it is an input of this run", q)
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when nothing is left
            elif file_kind(p) is not None:
                raise RunFolderError(f"{p} is {file_kind(p)}; --force removes only files a run wrote",
                                     hint="move it away, or use another --out folder")
        self._cache.clear()

    # ---------------------------------------------------------------- lock
    def close(self) -> None:
        """Release the folder's lock (the store stays usable, unlocked). Idempotent."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @property
    def locked(self) -> bool:
        """Whether this store still holds the folder's lock."""
        return self._lock is not None and self._lock.fd is not None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- damage
    def read_back(self, what: str, files: Iterable[str | os.PathLike], read: Callable[[], T]) -> T | None:
        """``read()`` of run-written files; ``None`` when none of ``files`` exists, or when
        they are damaged (then they are removed, with a warning, for the caller to recompute)."""
        files = [Path(f) for f in files]
        if not any(f.exists() for f in files):
            return None
        try:
            return read()
        except _DAMAGE as e:
            log.warning("%s in %s is damaged (%s): computing it again (removing %s)", what, self.out,
                        " ".join(str(e).split()) or type(e).__name__,
                        ", ".join(str(f) for f in files if f.exists()))
            for f in files:
                if f.is_file() or f.is_symlink():
                    f.unlink()
            return None

    # ---------------------------------------------------------------- checkpoints
    def _stage(self, stage: str) -> dict:
        if stage not in self._cache:
            p = self.ckpt / f"{stage}.json"
            self._cache[stage] = self.read_back(f"checkpoint {stage}", [p], lambda: read_object(p)) or {}
        return self._cache[stage]

    def has(self, stage: str, key: str) -> bool:
        return key in self._stage(stage)

    def get(self, stage: str, key: str) -> Any:
        return self._stage(stage)[key]

    def put(self, stage: str, key: str, value: Any) -> Any:
        return self.put_many(stage, {key: value})[key]

    def put_many(self, stage: str, items: dict[str, Any]) -> dict:
        """Checkpoint several points in one atomic write: after a crash, all or none are saved.

        Values are kept as they read back from the file (canonical JSON: non-finite
        floats become ``None``), so a fresh and a resumed run see the same values; the
        in-memory copy changes only once the file is written.
        """
        data = {**self._stage(stage), **json.loads(canonical_json(items))}
        write_json(self.ckpt / f"{stage}.json", data)
        self._cache[stage] = data
        return data

    def point(self, stage: str, key: str, compute: Callable[[], Any]) -> Any:
        """The checkpointed value of one point, computing and saving it if missing.

        The value is always returned as it reads back from JSON, so a resumed run sees
        exactly what a fresh run saw.
        """
        if self.has(stage, key):
            return self.get(stage, key)
        return self.put(stage, key, compute())

    def count(self, stage: str) -> int:
        return len(self._stage(stage))
