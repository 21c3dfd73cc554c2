"""A study: a loop over the registered stages, and the ``results.json`` it writes.

Context
-------
:class:`Study` runs any registered kind of study (:class:`~persona_refusal.study.registry.StudyKind`,
found from the configuration's class): the persona-gating study (:class:`StudyConfig`,
registered here) or the refusal-direction study (:mod:`persona_refusal.study.refusal`).
It builds the kind's context (a :class:`~persona_refusal.study.context.RunContext`, which
checks every input and opens the run folder before any compute), runs the stages of
:func:`~persona_refusal.study.registry.stage_order` one after another, and writes
``results.json``: a header (schema, model, configuration, prompt sets, judge, randomness)
followed by each stage's result keys, then ``run_info`` (timings, host, device, versions —
the only part that differs between a fresh and a resumed run).
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from persona_refusal.errors import RunFolderError
from persona_refusal.models import ChatModel, load_chat_model
from persona_refusal.prompts import PromptSet
from persona_refusal.results import SummaryDict
from persona_refusal.storage import read_json_checked, write_json
from persona_refusal.study.baseline import BASELINE_MAX_NEW_TOKENS, baseline_record
from persona_refusal.study.config import SectionedConfig, resolve_device
from persona_refusal.study.context import model_dtype
from persona_refusal.study.gating import StudyConfig  # importing it registers the gating study and its stages
from persona_refusal.study.registry import Stage, StudyKind, kind_of_config, kind_of_schema, stage_order

if TYPE_CHECKING:
    from persona_refusal.evaluation import Judge

__all__ = ["Study", "run_study", "load_results", "preset_stages"]

log = logging.getLogger(__name__)

class Study:
    """One run of a study over its registered stages (the kind of study is the one whose
    configuration class ``config`` is: :class:`StudyConfig` → the gating study).

    Use :func:`run_study`; this class exposes the context (``study.ctx``) and the stage
    list (``study.stages``) for notebooks, e.g. to run a single stage.
    """

    def __init__(self, chat_model: ChatModel, config: SectionedConfig, out: str | os.PathLike, *,
                 force: bool = False, progress: bool = True, judge: "Judge | None" = None,
                 prompts: dict[str, PromptSet] | None = None, stages: Sequence[str] | None = None) -> None:
        self.kind: StudyKind = kind_of_config(config)
        # first: an unknown stage fails before the folder is locked
        self.stages: list[Stage] = stage_order(stages, self.kind.name)
        self.ctx = self.kind.context(chat_model, config, out, force=force, progress=progress, judge=judge,
                                     prompts=prompts)
        self.memory: dict[str, float | None] = {}
        """Peak resident memory (MB) before the stages and during each (``run_info.stage_peak_rss_mb``)."""
        self.warn: "Callable[[str], None]" = lambda text: log.warning("%s", text)
        """Where the baseline check's warning goes as soon as it is known (the CLI prints it)."""

    # what the CLI reads while a run is interrupted
    @property
    def store(self):
        return self.ctx.store

    @property
    def out(self) -> Path:
        return self.ctx.out

    @property
    def timings(self) -> dict[str, float]:
        return self.ctx.timings

    @property
    def stage_name(self) -> str:
        return self.ctx.stage_name

    def run(self) -> SummaryDict:
        """Run (or resume) every stage; write and return ``results.json``. The run folder's
        lock is released when it returns or fails (:meth:`close`)."""
        try:
            t_start = time.time()
            ctx = self.ctx
            results = self._header()
            self.memory = {"before_stages": _peak_rss_mb()}  # the model's load, when it happened in this process
            results["refusal_baseline"] = self._baseline()
            for st in self.stages:
                ctx.stage_name = st.name
                log.info("stage %s", st.name)
                _reset_peak_rss()
                res = st.run(ctx)
                self.memory[st.name] = _peak_rss_mb()
                ctx.results[st.name] = res
                for key, value in res.to_json().items():
                    if isinstance(value, dict) and isinstance(results.get(key), dict):
                        results[key] = {**results[key], **value}  # e.g. "sweep": caches + judged confirm
                    else:
                        results[key] = value
            results["run_info"] = self._run_info(t_start)
            write_json(ctx.out / "results.json", results)
            return self.kind.results(results)
        finally:
            self.close()

    def _baseline(self) -> dict:
        """The baseline check (:mod:`persona_refusal.study.baseline`): judged replies of the
        unsteered model to the harmful val prompts, checkpointed; warns when it barely refuses."""
        ctx = self.ctx
        ctx.stage_name = "refusal_baseline"
        t0 = time.perf_counter()
        n = min(int(ctx.cfg.max_new_tokens), BASELINE_MAX_NEW_TOKENS)
        prompts = list(ctx.prompts["val_harmful"])
        got = ctx.judged("refusal_baseline", prompts, {"none": []}, "baseline check: harmful val prompts",
                         max_new_tokens=n)["none"]
        record = baseline_record(got["labels"], judge=ctx.judge_key if ctx.judge is None else "custom",
                                 max_new_tokens=n)
        ctx.timings["refusal_baseline"] = ctx.timings.get("refusal_baseline", 0.0) + time.perf_counter() - t0
        if record["warning"]:
            self.warn(record["warning"])
        return record

    def close(self) -> None:
        """Release the run folder's lock (a study that is not run holds it until then)."""
        self.ctx.store.close()

    def _header(self) -> dict:
        ctx, cfg = self.ctx, self.ctx.cfg
        return {
            "schema": self.kind.schema,
            "model": ctx.cm.fingerprint(),
            "config": ctx.config_record["config"],
            "resolved_layers": ctx.layers,
            "prompt_sets": ctx.config_record["prompt_sets"],
            "judge": ctx.config_record["judge"],
            "randomness": self.kind.randomness(cfg),
        }

    def _run_info(self, t_start: float) -> dict:
        def version(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None

        return {
            "stage_seconds": {k: round(v, 2) for k, v in self.ctx.timings.items()},
            "stage_peak_rss_mb": dict(self.memory),
            "total_seconds": round(time.time() - t_start, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed": self.ctx.store.resumed,
            "stages": [s.name for s in self.stages],
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": str(self.ctx.cm.device),
            "dtype": model_dtype(self.ctx.cm),
            "decode": self.ctx.cm.decode,
            "gpu": torch.cuda.get_device_name(self.ctx.cm.device) if self.ctx.cm.device.type == "cuda" else None,
            "versions": {n: version(n) for n in ("persona-refusal", "torch", "transformer-lens", "transformers")},
        }


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-resident-memory mark of this process (Linux; elsewhere nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process since the last reset, in MB (the kernel's
    ``VmHWM``; ``None`` where ``/proc`` does not have it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_study(
    config: SectionedConfig | None = None,
    out: str | os.PathLike = "runs/gating",
    *,
    chat_model: ChatModel | None = None,
    force: bool = False,
    progress: bool = True,
    judge: "Judge | None" = None,
    stages: Sequence[str] | None = None,
) -> SummaryDict:
    """Run (or resume) a study; write ``out/results.json`` and return it, typed (as
    :func:`load_results` reads it).

    Args:
        config: the study's settings, whose class says which study runs (default:
            :class:`StudyConfig` defaults, the gating study on the demo model;
            :class:`persona_refusal.study.refusal.RefusalConfig` runs the refusal study).
        out: output folder; a folder holding a run with the same configuration resumes.
        chat_model: an already loaded model (its id is recorded; it must run in
            ``config.dtype``, and it runs where it is, whatever ``config.device``).
        force: start over in a folder holding a different configuration.
        judge: a custom judge (see :class:`persona_refusal.evaluation.Judge`).
        stages: run only these stages (and those they require); default: a preset's, or all.

    Example:
        >>> results = run_study(StudyConfig.preset("smoke", model="tiny"), "runs/smoke",
        ...                     progress=False)                                # doctest: +SKIP
        >>> results.gating[0].layer, results.refusal_direction.layer           # doctest: +SKIP
        (0, 3)
    """
    config = config or StudyConfig()
    cm = chat_model or load_chat_model(config.model, device=resolve_device(config.device), dtype=config.dtype,
                                       progress=progress, decode=config.decode)
    return Study(cm, config, out, force=force, progress=progress, judge=judge, stages=stages).run()


def preset_stages(name: str, config: type[SectionedConfig] = StudyConfig) -> list[str] | None:
    """The stages a preset of ``config``'s study runs (``None``: all)."""
    st = config.PRESETS[name].stages
    return list(st) if st is not None else None


def load_results(path: str | os.PathLike) -> SummaryDict:
    """Read a ``results.json`` (or the folder holding it), checking its schema; returned as
    its study's typed results (:class:`~persona_refusal.results.GatingResults` for the
    gating study, :class:`~persona_refusal.results.RefusalResults` for the refusal study):
    every key is an attribute, at any depth, and an item.

    Example:
        >>> results = load_results("figures")                       # the committed demo run
        >>> results.refusal_direction.layer, results["refusal_direction"]["layer"]
        (9, 9)
        >>> [g.refusal_rate for g in results.gating][:2]
        [0.0, 0.0]
        >>> type(results.stage("eval")).__name__
        'EvalResult'
        >>> from persona_refusal.analysis import gating_figure      # doctest: +SKIP
        >>> gating_figure(results).show()                            # doctest: +SKIP
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    data = read_json_checked(p, RunFolderError, missing=f"no results.json at {p}",
                             hint="run `persona-refusal run --out DIR` first")
    kind = kind_of_schema(data.get("schema")) if isinstance(data, dict) and isinstance(data.get("schema"), str) else None
    if kind is None:
        raise RunFolderError(f"{p} is not a persona_refusal results file")
    return kind.results(data)
