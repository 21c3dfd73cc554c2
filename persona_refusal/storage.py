"""Files written so that nothing is ever half-written.

Every file persona_refusal writes goes through :func:`atomic_write_bytes`: the bytes go
to a temporary file in the same folder, are flushed to disk, and the temporary file is
renamed over the target. A crash or Ctrl-C at any moment leaves either the old file or
the new one, never a truncated one. JSON is written canonically (sorted keys) so that
two runs with the same content produce byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch
from safetensors.torch import load_file, save

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
    "read_json_checked",
    "write_tensors",
    "read_tensors",
    "sha256_file",
    "sha256_bytes",
    "sha256_json",
    "canonical_json",
]


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
def atomic_open(path: str | os.PathLike, *, private: bool = False) -> Iterator[BinaryIO]:
    """Write a file atomically through a ``with`` block: ``with atomic_open(p) as f: f.write(…)``.

    The bytes go to a temporary file in ``path``'s folder (created if needed). When the
    block ends normally the file is flushed, fsynced and renamed over ``path``; when it
    raises (a check that fails, Ctrl-C) the temporary file is deleted and ``path`` is left
    as it was.

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
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
    if not p.is_file():
        raise error(missing, hint=hint)
    try:
        return read_json(p)
    except ValueError as e:
        raise error(f"{p} is not valid JSON ({e})") from None


def write_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors, atomically.

    Example:
        >>> import pathlib, tempfile
        >>> path = write_tensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"v": torch.ones(3)})
        >>> read_tensors(path)["v"]
        tensor([1., 1., 1.])
    """
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle).

    Example:
        >>> import pathlib, tempfile
        >>> path = write_tensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors", {"v": torch.zeros(2)})
        >>> sorted(read_tensors(path))
        ['v']
    """
    return load_file(str(path))


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
