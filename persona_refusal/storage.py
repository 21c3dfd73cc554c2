"""Files written so that nothing is ever half-written, nothing is written through a link,
and no file the package did not write is replaced; user files read with one checked reader.

Writing
-------
Every file persona_refusal writes goes through :func:`atomic_open`: the bytes go to a
temporary file in the same folder (created exclusively, never through a link), are
flushed to disk, and the temporary file is renamed over the target. A crash or Ctrl-C at
any moment leaves either the old file or the new one, never a truncated one. JSON is
written canonically (sorted keys) so that two runs with the same content produce
byte-identical files.

The storage rule
----------------
* A target that is a symbolic link, a named pipe, a device, a socket or a folder is refused
  before anything is opened (:func:`atomic_open`, :func:`check_output`), with one line that
  names the path and the flag it came from.
* A file the package keeps open (the run folder's ``.lock``) is opened with ``O_NOFOLLOW``
  (:func:`open_nofollow`).
* An output path given by the user is checked before any model loads
  (:func:`check_output`): an existing file there is replaced only when it is one the
  command wrote before (its ``ours`` test: a format marker in the file).
* A folder a command claims (a study's run folder, the ablation demo's folder) records what
  it owns in ``.persona_refusal_run.json`` (:data:`MANIFEST`); every file written below an
  owned entry of such a folder is added to the manifest's ``files`` list
  (:func:`note_written`), and ``--force`` removes only the files listed there.

Reading user files
------------------
:func:`read_user_bytes`, :func:`read_user_text` and :func:`read_user_json` are the one
checked reader of every file a user hands the package (prompt, persona, config, results,
judge-check cases, control vectors' JSON): a regular file only (a pipe would block),
opened without blocking, at most :data:`MAX_USER_FILE` bytes, UTF-8 with or without a
byte-order mark, JSON nested at most :data:`MAX_JSON_DEPTH` deep, and optionally the types
of named fields — each problem a one-line error of the caller's class.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import torch

from persona_refusal.errors import ConfigError, PersonaRefusalError

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
    "read_json_checked",
    "write_tensors",
    "read_tensors",
    "SafetensorError",
    "sha256_file",
    "sha256_bytes",
    "sha256_json",
    "mark_png",
    "is_marked_png",
    "canonical_json",
    "MANIFEST",
    "MAX_USER_FILE",
    "MAX_JSON_DEPTH",
    "file_kind",
    "check_output",
    "open_nofollow",
    "note_written",
    "manifest_files",
    "read_user_bytes",
    "read_user_text",
    "read_user_json",
    "json_depth",
    "check_fields",
    "claim_folder",
]

MANIFEST = ".persona_refusal_run.json"
"""The ownership record of a folder a command claims (which entries it owns, which files it wrote)."""
MAX_USER_FILE = 256 * 1024 * 1024
"""The largest user file the checked reader reads (bytes)."""
MAX_JSON_DEPTH = 64
"""The deepest JSON nesting the checked reader accepts (no file the package reads needs more)."""

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def file_kind(path: str | os.PathLike) -> str | None:
    """What is at ``path`` without following a link: ``None`` (nothing), ``"file"`` (a
    regular file), or a description (``"a symbolic link"``, ``"a named pipe (FIFO)"``,
    ``"a folder"``, ...).

    Example:
        >>> import tempfile
        >>> file_kind(tempfile.mkdtemp()), file_kind("/no/such/path")
        ('a folder', None)
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a parent is a file: nothing can be there
        return None
    if stat.S_ISREG(mode):
        return "file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _shown(path: str | os.PathLike, flag: str | None) -> str:
    return f"{flag} {os.fspath(path)}" if flag else os.fspath(path)


def check_output(path: str | os.PathLike, *, flag: str | None = "--out", folder: bool = False,
                 ours: Callable[[Path], bool] | None = None, writer: str = "persona-refusal",
                 example: str | None = None, error: type = ConfigError) -> Path:
    """Check an output path before anything is loaded or computed, by the storage rule.

    Refused, each with one line of class ``error`` naming the path and ``flag``: an empty
    path; a file path written with a trailing slash; a parent that exists and is not a
    folder; the path itself a symbolic link, a named pipe, a device or a socket; a folder
    where a file is wanted (or a file where a folder is, ``folder=True``); and an existing
    regular file that ``ours`` does not recognise as one this command wrote (without
    ``ours``, any existing file is refused).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "notes.txt").write_text("mine")
        >>> check_output(d / "notes.txt", writer="persona-refusal judge-check")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: --out .../notes.txt exists and was not written by persona-refusal judge-check; it is not replaced (move it away, or give --out another path)
    """
    text = os.fspath(path)
    shown = _shown(path, flag)
    what = "a folder" if folder else "a file"
    give = f"give {flag or 'it'} {what} path"
    if not isinstance(text, str) or not text.strip():
        raise error(f"{flag or 'the output path'} is empty ({text!r})",
                    hint=give + (f", e.g. {flag} {example}" if example and flag else ""))
    if "\x00" in text:
        raise error(f"{flag or 'the output path'} holds a NUL character ({text!r})", hint=give)
    p = Path(text).expanduser()
    if not folder and text.endswith(("/", os.sep)):
        raise error(f"{shown} ends with a slash, so it names a folder, not a file", hint=give)
    parent = p.parent
    while True:
        kind = file_kind(parent)
        if kind is None and parent != parent.parent:
            parent = parent.parent
            continue
        if kind not in (None, "a folder") and not (kind == "a symbolic link" and parent.is_dir()):
            raise error(f"cannot create the output {'folder' if folder else 'file'} {text}: {parent} is not a folder",
                        hint=give)
        break
    kind = file_kind(p)
    if kind is None:
        return p
    if folder:
        if kind == "a folder":
            return p
        if kind == "file":
            raise error(f"{text} exists and is not a folder", hint=give)
        raise error(f"{shown} is {kind}; persona_refusal does not write through it", hint=give)
    if kind == "a folder":
        raise error(f"{shown} is a folder", hint=give)
    if kind != "file":
        raise error(f"{shown} is {kind}; persona_refusal writes only regular files it created", hint=give)
    if ours is None or not _safely(ours, p):
        raise error(f"{shown} exists and was not written by {writer}; it is not replaced",
                    hint=f"move it away, or give {flag or 'it'} another path")
    return p


def _safely(test: Callable[[Path], bool], p: Path) -> bool:
    try:
        return bool(test(p))
    except (OSError, ValueError, RecursionError, PersonaRefusalError):
        return False


def open_nofollow(path: str | os.PathLike, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o644, *,
                  error: type = ConfigError, flag: str | None = None) -> int:
    """``os.open`` that never follows a link and opens only a regular file (a pipe or device
    is refused, without blocking): the file descriptor, or a one-line ``error``.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "link").symlink_to(d / "target")
        >>> open_nofollow(d / "link")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: .../link is a symbolic link; persona_refusal does not open files through links (remove it)
    """
    shown = _shown(path, flag)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as e:
        kind = file_kind(path)
        if kind not in (None, "file"):
            raise error(f"{shown} is {kind}; persona_refusal does not open files through links"
                        if kind == "a symbolic link" else f"{shown} is {kind}, not a regular file",
                        hint="remove it") from None
        raise
    mode_now = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode_now):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode_now)), "not a regular file")
        raise error(f"{shown} is {kind}, not a regular file", hint="remove it")
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    return fd


# ---------------------------------------------------------------- ownership of claimed folders
_MANIFEST_CACHE: dict[str, tuple[tuple, dict | None]] = {}


def _manifest_of(folder: Path) -> dict | None:
    """The manifest of ``folder`` (a JSON object with an ``owned`` list), or ``None``."""
    m = folder / MANIFEST
    try:
        st = os.lstat(m)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _MANIFEST_CACHE.get(str(m))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        data = read_json(m)
    except (OSError, ValueError, RecursionError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("owned"), list)):
        data = None
    _MANIFEST_CACHE[str(m)] = (key, data)
    return data


def manifest_files(folder: str | os.PathLike) -> list[str] | None:
    """The files (relative paths) the manifest of ``folder`` says were written there by the
    package; ``None`` when it has no manifest or one that lists no files (an older version)."""
    data = _manifest_of(Path(folder))
    files = data.get("files") if data is not None else None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else None


def note_written(path: str | os.PathLike) -> None:
    """Record ``path`` in the manifest of the claimed folder it lies in (its folder or the
    one above), when it lies below an entry that folder owns; otherwise do nothing.

    :func:`atomic_open` calls it for every file it writes, so a claimed folder's manifest
    lists every file the package wrote there (what ``--force`` may remove).
    """
    p = Path(path)
    for folder in (p.parent, p.parent.parent):
        data = _manifest_of(folder)
        if data is None:
            continue
        rel = p.relative_to(folder).as_posix()
        if rel.split("/")[0] not in data["owned"]:
            return
        files = data.get("files") if isinstance(data.get("files"), list) else []
        if rel not in files:
            _write_manifest(folder, {**data, "files": sorted({*files, rel})})
        return


def claim_folder(folder: str | os.PathLike, fmt: str, owned: list[str], *, what: str, flag: str = "--out",
                 write: bool = True, error: type = ConfigError) -> Path:
    """Claim ``folder`` for one kind of output (``fmt``, e.g. ``"persona_refusal.demo/1"``)
    that writes the top-level entries ``owned``: a new or empty folder, a folder of other
    files that holds none of ``owned`` and no run, or one this kind claimed before. Anything
    else (another kind's folder, a study run, files of those names it did not write) is
    refused with one line; ``write=False`` checks only (before a model loads).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "demo"
        >>> claim_folder(d, "persona_refusal.demo/1", ["results.json"], what="the ablation demo").is_dir()
        True
    """
    p = check_output(folder, flag=flag, folder=True, error=error)
    data = _manifest_of(p)
    shown = f"{flag} {os.fspath(folder)}" if flag else os.fspath(folder)
    if data is not None:
        if data.get("format") != fmt:
            raise error(f"{shown} holds a persona_refusal output of another kind ({data.get('format')}); "
                        f"{what} does not write there", hint=f"give {flag} another folder")
    elif file_kind(p / MANIFEST) is not None:
        raise error(f"{shown} holds a damaged {MANIFEST}", hint=f"give {flag} another folder")
    else:
        held = [n for n in (*owned, "config.json", "results.json") if file_kind(p / n) is not None]
        if held:
            raise error(f"{shown} holds {', '.join(dict.fromkeys(held))}, which {what} did not write; it is not "
                        f"replaced", hint=f"give {flag} a new or empty folder")
    for name in owned:
        kind = file_kind(p / name)
        if kind not in (None, "file", "a folder"):
            raise error(f"{p / name} is {kind}; {what} writes only regular files", hint=f"give {flag} another folder")
    if write:
        p.mkdir(parents=True, exist_ok=True)
        if data is None:
            _write_manifest(p, {"format": fmt, "owned": list(owned), "files": [],
                                "note": f"written by persona_refusal ({what}): the entries it owns here"})
    return p


def _write_manifest(folder: Path, data: dict) -> None:
    with atomic_open(folder / MANIFEST, _note=False) as f:
        f.write(canonical_json(data).encode("utf-8"))



# ---------------------------------------------------------------- PNGs the package wrote
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MARK = b"Software\x00persona_refusal"
"""The text chunk (``tEXt``, keyword ``Software``) every PNG of the package carries: how
``figures --copy-to`` tells a figure it wrote before from a user's file of the same name."""


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def mark_png(data: bytes) -> bytes:
    """``data`` (a PNG) with the package's ``Software`` text chunk after its header chunk;
    a PNG that carries it already is returned unchanged. Pixels are untouched.

    Example:
        >>> png = _PNG_SIGNATURE + _png_chunk(b"IHDR", bytes(13)) + _png_chunk(b"IEND", b"")
        >>> import io, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.png"; _ = p.write_bytes(mark_png(png))
        >>> is_marked_png(p), mark_png(p.read_bytes()) == p.read_bytes()
        (True, True)
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (no signature and header chunk)")
    end = 8 + 12 + int.from_bytes(data[8:12], "big")
    if _has_mark(data):
        return data
    return data[:end] + _png_chunk(b"tEXt", _PNG_MARK) + data[end:]


def _has_mark(data: bytes) -> bool:
    """Whether the chunks of ``data`` before the first image data hold the package's mark."""
    at = 8
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            return False
        if kind == b"tEXt" and data[at + 8:at + 8 + size] == _PNG_MARK:
            return True
        at += 12 + size
    return False


def is_marked_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG the package wrote (it carries the mark of :func:`mark_png`);
    reads only the chunks before the image data, never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        head = f.read(1 << 16)
    return head.startswith(_PNG_SIGNATURE) and _has_mark(head)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Example:
        >>> import pathlib, tempfile
        >>> atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "a.bin", b"ab").read_bytes()
        b'ab'
    """
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, private: bool = False, _note: bool = True) -> Iterator[BinaryIO]:
    """Write a file atomically through a ``with`` block: ``with atomic_open(p) as f: f.write(…)``.

    The bytes go to a temporary file in ``path``'s folder (created if needed). When the
    block ends normally the file is flushed, fsynced and renamed over ``path``; when it
    raises (a check that fails, Ctrl-C) the temporary file is deleted and ``path`` is left
    as it was. A ``path`` that is a link, a pipe, a device or a folder is refused before
    anything is written (:class:`~persona_refusal.errors.ConfigError`): the rename would
    replace a link the package did not make. In a claimed folder the file is recorded in
    its manifest (:func:`note_written`).

    Args:
        private: keep the temporary file's owner-only permissions (``0600``) instead of
            the usual ones given by the umask.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
        >>> with atomic_open(p) as f:
        ...     _ = f.write(b"ab")
        >>> p.read_bytes()
        b'ab'
    """
    path = Path(path)
    kind = file_kind(path)
    if kind not in (None, "file"):
        raise ConfigError(f"{path} is {kind}; persona_refusal writes only regular files it created",
                          hint="move it away, or write somewhere else")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if _note:  # listed before it exists: a crash never leaves a run's file unlisted
            note_written(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically.

    Example:
        >>> import pathlib, tempfile
        >>> atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hello").read_text()
        'hello'
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Turn tensors, paths, tuples and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    return obj


def canonical_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON with sorted keys and no NaN (non-finite floats become ``null``).

    Example:
        >>> canonical_json({"b": 1, "a": float("inf")}, indent=None)
        '{"a": null, "b": 1}\\n'
    """
    return json.dumps(_jsonable(obj), sort_keys=True, indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as canonical JSON, atomically.

    Example:
        >>> import pathlib, tempfile
        >>> path = write_json(pathlib.Path(tempfile.mkdtemp()) / "x.json", {"b": 1, "a": [1.5, float("nan")]})
        >>> read_json(path)
        {'a': [1.5, None], 'b': 1}
    """
    return atomic_write_text(path, canonical_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Example:
        >>> import pathlib, tempfile
        >>> read_json(write_json(pathlib.Path(tempfile.mkdtemp()) / "x.json", {"k": [1, 2]}))
        {'k': [1, 2]}
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_checked(path: str | os.PathLike, error: type, *, missing: str, hint: str | None = None) -> Any:
    """:func:`read_json`, with one-line errors of class ``error`` (a
    :class:`~persona_refusal.errors.PersonaRefusalError`) for a missing file or bad JSON.

    Example:
        >>> from persona_refusal.errors import RunFolderError
        >>> read_json_checked("/no/such.json", RunFolderError, missing="no such file")
        Traceback (most recent call last):
        persona_refusal.errors.RunFolderError: no such file
    """
    p = Path(path)
    if file_kind(p) in (None, "a folder") or (file_kind(p) == "a symbolic link" and not p.exists()):
        raise error(missing, hint=hint)
    data = read_user_bytes(p, what="JSON file", error=error, hint=hint)  # a pipe or device: refused, never opened
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{p} is not valid JSON (it is not UTF-8 text)") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{p} holds JSON nested too deeply to read ({depth} levels; at most {MAX_JSON_DEPTH})", hint=hint)
    try:
        return json.loads(text)
    except ValueError as e:
        raise error(f"{p} is not valid JSON ({e})") from None


# ---------------------------------------------------------------- the checked reader of user files
def read_user_bytes(path: str | os.PathLike, *, what: str = "file", flag: str | None = None,
                    error: type = ConfigError, hint: str | None = None, limit: int = MAX_USER_FILE,
                    kind_hint: str | None = None, label: str | None = None) -> bytes:
    """The bytes of a file a user handed the package, by the one reading rule: it must be
    a regular file (a folder, a named pipe, a device is refused *before* it is opened, and
    the file is opened without blocking and checked again, so a pipe swapped in cannot
    block), at most ``limit`` bytes. Every problem is one line of class ``error`` naming
    ``what`` (e.g. ``"prompt file"``), the path and ``flag``.

    Example:
        >>> read_user_bytes("/no/such.jsonl", what="cases file", flag="--cases")
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: cases file /no/such.jsonl (--cases) does not exist (check the path)
    """
    p = Path(os.fspath(path)).expanduser()
    shown = (label if label is not None else f"{what} {p}") + (f" ({flag})" if flag else "")
    give = kind_hint or f"give the path of a regular {what}"
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{shown} does not exist", hint="check the path") from None
    except OSError as e:
        raise error(f"cannot read {shown}: {e.strerror}", hint="check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{shown} is a folder, not a {what}", hint=give)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{shown} is {kind}, not a {what}", hint=give)
    if st.st_size > limit:
        raise error(f"{shown} is {st.st_size} bytes, more than the {limit} a {what} may have", hint=give)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror}", hint="check its permissions") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise error(f"{shown} is {kind}, not a {what}", hint=give)
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {shown}: {e.strerror}", hint="check its permissions") from None
    if len(data) > limit:
        raise error(f"{shown} is more than the {limit} bytes a {what} may have", hint=give)
    return data


def read_user_text(path: str | os.PathLike, *, what: str = "file", flag: str | None = None,
                   error: type = ConfigError, hint: str | None = None, limit: int = MAX_USER_FILE) -> str:
    """:func:`read_user_bytes` decoded as UTF-8, with or without a byte-order mark.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"\\xef\\xbb\\xbfhello")
        >>> read_user_text(p)
        'hello'
    """
    data = read_user_bytes(path, what=what, flag=flag, error=error, hint=hint, limit=limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        p = Path(os.fspath(path)).expanduser()
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start})", hint=hint or f"give a UTF-8 {what}") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """How deeply the JSON ``text`` nests lists and objects (strings are skipped), read
    without recursion, so any depth is measured safely.

    Example:
        >>> json_depth('{"a": [[1], "[[["]}')
        3
    """
    depth = deepest = 0
    for ch in re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


_TYPE_WORDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def check_fields(data: Any, fields: Mapping[str, type | tuple], *, where: str, error: type = ConfigError,
                 hint: str | None = None) -> Any:
    """Check the types of the fields of a JSON value read from a file: ``fields`` maps a
    dotted path (``"config.judge"``; ``"*"`` for the value itself) to a type or a tuple of
    types; a field that is absent is not checked (its reader decides). ``float`` accepts
    integers; no type but ``bool`` accepts booleans.

    Example:
        >>> check_fields({"config": []}, {"config": dict}, where="config.json")
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: config.json: field 'config' is a list, not an object
    """
    for dotted, types in fields.items():
        types = types if isinstance(types, tuple) else (types,)
        if float in types and int not in types:
            types = (*types, int)
        value, found = data, True
        if dotted != "*":
            for key in dotted.split("."):
                if isinstance(value, dict) and key in value:
                    value = value[key]
                else:
                    found = False
                    break
        if not found:
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            name = "the file" if dotted == "*" else f"field {dotted!r}"
            want = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types if not (t is int and float in types))
            raise error(f"{where}: {name} is {_type_name(value)}, not {want}", hint=hint)
    return data


def read_user_json(path: str | os.PathLike, *, what: str = "JSON file", flag: str | None = None,
                   error: type = ConfigError, hint: str | None = None, fields: Mapping[str, type | tuple] | None = None,
                   lines: bool = False, limit: int = MAX_USER_FILE, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON (``lines=True``: JSON Lines, a list of ``(line number, value)``) file a user
    handed the package, by the one reading rule (:func:`read_user_text`), nested at most
    ``max_depth`` deep, with the types of ``fields`` checked (:func:`check_fields`).

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "deep.json"
        >>> _ = p.write_text("[" * 5000 + "]" * 5000)
        >>> read_user_json(p, what="config file")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        persona_refusal.errors.ConfigError: config file .../deep.json holds JSON nested too deeply to read (...)
    """
    p = Path(os.fspath(path)).expanduser()
    text = read_user_text(p, what=what, flag=flag, error=error, hint=hint, limit=limit)
    give = hint or f"give a {what} of plain JSON"

    def parse(chunk: str, where: str) -> Any:
        depth = json_depth(chunk)
        if depth > max_depth:
            raise error(f"{what} {where} holds JSON nested too deeply to read", hint=give)
        try:
            value = json.loads(chunk)
        except RecursionError:  # pragma: no cover (the depth check comes first)
            raise error(f"{what} {where} holds JSON nested too deeply to read", hint=give) from None
        except ValueError as e:
            raise error(f"{what} {where} is not valid JSON ({e})", hint="fix the file") from None
        if fields:
            check_fields(value, fields, where=f"{what} {where}", error=error, hint=give)
        return value

    if not lines:
        return parse(text, str(p))
    return [(i, parse(line, f"{p} line {i}")) for i, line in enumerate(text.split("\n"), 1) if line.strip()]


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def write_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors, atomically, one tensor at a time.

    The file is the standard safetensors format (read back by :func:`read_tensors` or any
    safetensors reader). It is streamed: at most one tensor is copied at a time (to make
    it contiguous on the CPU), so saving a model needs no second copy of its weights in
    memory (``safetensors.torch.save`` builds the whole file as one ``bytes`` object).

    Example:
        >>> import pathlib, tempfile
        >>> path = write_tensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"v": torch.ones(3)})
        >>> read_tensors(path)["v"]
        tensor([1., 1., 1.])
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    # Largest element size first, as safetensors does, so every tensor stays aligned.
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot save tensor {name!r} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with atomic_open(path) as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for name in order:
            t = tensors[name].detach()
            flat = t.to("cpu").contiguous().reshape(-1)
            if flat.numel():
                f.write(memoryview(flat.view(torch.uint8).numpy()))
            del flat
    return Path(path)


class SafetensorError(ValueError):
    """A file that is not a well-formed safetensors file (:func:`read_tensors`)."""


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle) into ordinary memory, one tensor at a time.

    The bytes are read straight into each tensor's own buffer: the file is not memory
    mapped, so the loaded tensors hold no page-cache pages of it, and nothing but the
    tensors stays in memory (a model's weights take their size once).

    Raises:
        SafetensorError: the file is truncated, its header is malformed, or its tensors'
            offsets do not fit the file.

    Example:
        >>> import pathlib, tempfile
        >>> path = write_tensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"v": torch.zeros(2)})
        >>> sorted(read_tensors(path))
        ['v']
    """
    dtypes = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    size = os.path.getsize(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= size - 8 or n > 100_000_000:
            raise SafetensorError(f"{path}: bad header length")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise SafetensorError(f"{path}: the header is not JSON") from None
        if not isinstance(header, dict):
            raise SafetensorError(f"{path}: the header is not a JSON object")
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = dtypes[info["dtype"]], [int(d) for d in info["shape"]]
                start, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorError(f"{path}: bad header entry for {name!r}") from None
            t = torch.empty(shape, dtype=dtype)
            if end - start != t.numel() * t.element_size() or start < 0 or base + end > size:
                raise SafetensorError(f"{path}: tensor {name!r} does not fit the file")
            if t.numel():
                f.seek(base + start)
                if f.readinto(memoryview(t.reshape(-1).view(torch.uint8).numpy())) != end - start:
                    raise SafetensorError(f"{path}: the file ends inside tensor {name!r}")
            out[name] = t
    return out


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed.

    Example:
        >>> import pathlib, tempfile
        >>> sha256_file(atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "e", b""))[:16]
        'e3b0c44298fc1c14'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes.

    Example:
        >>> sha256_bytes(b"")[:16]
        'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical (compact) JSON form of ``obj``.

    Example:
        >>> sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})
        True
    """
    return sha256_bytes(canonical_json(obj, indent=None).encode("utf-8"))
