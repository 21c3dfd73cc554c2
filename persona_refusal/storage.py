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
