"""The run folder: the configuration record, per-point checkpoints, all written atomically.

Context
-------
A study writes into one folder: ``config.json`` (what defines the run: configuration,
input checksums, resolved layers, model fingerprint, prompt sets), ``checkpoints/STAGE.json``
(every completed sweep point, keyed), ``directions/`` and finally ``results.json``. A folder
holding the same configuration resumes where it stopped; every write goes through
:mod:`persona_refusal.storage` (temporary file, fsync, rename), so an interrupted run never
leaves a half-written file, and a resumed run reads back exactly what a fresh run saved.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from persona_refusal.errors import RunFolderError
from persona_refusal.storage import canonical_json, read_json, write_json

__all__ = ["RunStore"]


class RunStore:
    """The output folder: configuration, per-point checkpoints and tensors, all atomic."""

    def __init__(self, out: str | os.PathLike, config: dict, *, force: bool = False) -> None:
        self.out = Path(out)
        self.ckpt = self.out / "checkpoints"
        cfg_path = self.out / "config.json"
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"{self.out} exists and is not a folder", hint="give --out a folder path")
        self.resumed = False
        if cfg_path.is_file():
            try:
                old = read_json(cfg_path)
            except ValueError:
                old = None
            if old != config:
                if not force:
                    changed = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
                    raise RunFolderError(
                        f"{self.out} holds a run with a different configuration (changed: {', '.join(changed[:6])})",
                        hint="use another --out folder, or --force to start over there",
                    )
                self._clear()
            else:
                self.resumed = self.ckpt.is_dir() and any(self.ckpt.iterdir())
        elif force:
            self._clear()
        self.ckpt.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, config)
        self._cache: dict[str, dict] = {}

    def _clear(self) -> None:
        for name in ("checkpoints", "results.json", "directions"):
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _stage(self, stage: str) -> dict:
        if stage not in self._cache:
            p = self.ckpt / f"{stage}.json"
            self._cache[stage] = read_json(p) if p.is_file() else {}
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
