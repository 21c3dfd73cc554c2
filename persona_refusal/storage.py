"""Files written so that nothing is ever half-written.

Every file persona_refusal writes goes through :func:`atomic_write_bytes`: the bytes go
to a temporary file in the same folder, are flushed to disk, and the temporary file is
renamed over the target. A crash or Ctrl-C at any moment leaves either the old file or
the new one, never a truncated one. JSON is written canonically (sorted keys) so that
two runs with the same content produce byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


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
