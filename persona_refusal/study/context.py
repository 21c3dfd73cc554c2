"""What the stages of every study work with: the model, the configuration, the prompts, the
judges, the run folder, one forward pass under interventions and judged generation.

Context
-------
:class:`RunContext` is the base of each study's context
(:class:`persona_refusal.study.gating.StudyContext`,
:class:`persona_refusal.study.refusal.RefusalContext`): it checks every input and opens the
run folder before any compute, and gives the stages the two measurements they share:
:meth:`RunContext.forward` (first-token outcomes, logits and residual streams of one pass)
and :meth:`RunContext.judged` (judged replies under several conditions in shared batches,
checkpointed in one write).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from persona_refusal.activations import BatchPlan, plan_batches
from persona_refusal.directions import DirectionGrid
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import (JUDGES, Judge, ModelJudge, decided_by, first_token_outcome, get_judge,
                                        judge_name, judged_conditions)
from persona_refusal.extraction import extract_directions
from persona_refusal.interventions import Intervention
from persona_refusal.prompts import PromptSet
from persona_refusal.storage import sha256_file
from persona_refusal.study.store import RunStore

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel
    from persona_refusal.study.registry import StageResult

__all__ = ["RunContext", "Forward", "file_hashes", "check_dtype", "model_dtype"]

log = logging.getLogger(__name__)


@dataclass
class Forward:
    """What one pass of a batch plan measured (:meth:`RunContext.forward`)."""

    resid: dict[int, list[torch.Tensor]]
    """``resid_pre`` layer → one ``[rows, pos, d_model]`` tensor per batch (the layers asked for)."""
    refused: list[bool]
    """Greedy first token is a refusal token, per prompt."""
    scores: list[float]
    """First-token refusal log-odds, per prompt."""
    logits: torch.Tensor | None = None
    """Next-token logits ``[n_prompts, d_vocab]`` (float32, CPU), when asked for."""


def file_hashes(given: Mapping[str, Sequence[Path]]) -> dict:
    """``{field: {file name: sha256}}`` of the input files a run is given."""
    return {name: {f.name: sha256_file(f) for f in files} for name, files in given.items()}


def model_dtype(chat_model: "ChatModel") -> str:
    """The dtype the model runs in, by name (``float32``, ``bfloat16`` …)."""
    return str(chat_model.model.cfg.dtype).replace("torch.", "")


def check_dtype(chat_model: "ChatModel", config: Any) -> None:
    """The model runs in the configured dtype (the dtype is part of a run's identity, so a
    run records the one it computed in)."""
    actual = model_dtype(chat_model)
    if actual != config.dtype:
        raise ConfigError(f"the model runs in {actual} but the configuration says dtype {config.dtype!r}",
                          hint=f"load the model with dtype={config.dtype!r}, or set dtype={actual!r} (--dtype {actual})")


def _judge_record(judge: "Judge") -> str:
    """How the run record names the headline judge: the class of a phrase or custom judge
    (``SubstringJudge``), a model judge's repr (model, rubric hash and window), so that a
    changed rubric or judge model is another run."""
    return repr(judge) if isinstance(judge, ModelJudge) else type(judge).__name__


class RunContext:
    """What the stages of any study share: the model, the configuration, the prompts, the
    judges, the run folder (opened, locked and checked against the configuration before
    any compute), timings, the finished stages' results and judged generation.

    A study's context subclasses it and says what is its own through four hooks:
    :meth:`resolve_layers` (the layer lists of this model's depth), :meth:`read_prompts`,
    :meth:`record_extra` (more of the run's identity), :meth:`given` (input files a run
    must never delete) and :meth:`check_inputs` (checks that need the model).

    Attributes:
        cm: the chat model. cfg: the configuration. layers: its layer lists resolved for
        this model. prompts: the prompt sets by role. store: the run folder. results: each
        finished stage's result, by stage name.
    """

    def __init__(self, chat_model: "ChatModel", config: Any, out, *, force: bool = False,
                 progress: bool = True, judge: "Judge | None" = None,
                 prompts: dict[str, PromptSet] | None = None) -> None:
        # every harmful/harmless prompt is formatted with the configured system prompt
        self.cm = chat_model.with_system(config.system_prompt) if config.system_prompt is not None else chat_model
        if self.cm.decode != config.decode:  # the configured decoding steps (a copy: the caller's model is untouched)
            self.cm = dataclasses.replace(self.cm, decode=config.decode)
        chat_model = self.cm
        self.cfg = config
        check_dtype(chat_model, config)
        self.layers = self.resolve_layers()
        self.progress = progress
        self.judge = judge
        self.prompts = prompts if prompts is not None else self.read_prompts()  # already read: by the CLI
        self.judge_key = judge_name(config.judge)
        """The name of the headline judge (canonical: ``keyword`` is ``strict``)."""
        self.judges: dict[str, "Judge"] = dict(JUDGES)
        """Every built-in phrase judge by name, and the configured model judge (``model:NAME``)
        when it is the headline one; judged stages record each one's labels."""
        if self.judge_key not in self.judges:  # a model judge: loaded when it first judges, beside the study's model
            # (the study's own model when NAME is the config's model: no second copy)
            self.judges[self.judge_key] = get_judge(self.judge_key, device=str(chat_model.device), dtype=config.dtype,
                                                    batch_size=config.batch_size, progress=progress,
                                                    models={config.model: self.cm})
        given = self.given()
        self.config_record = {
            "config": config.identity(),  # the device is not part of it: a run resumes on another device
            "inputs": file_hashes(given),
            "resolved": self.layers,
            "model": chat_model.fingerprint(),
            "prompt_sets": {k: v.describe() for k, v in self.prompts.items()},
            "judge": _judge_record(judge if judge is not None else self.judges[self.judge_key]),
            **self.record_extra(),
        }
        self.check_inputs()
        for j in self.judges.values():  # a judge model that cannot be found fails now, before anything is written
            if isinstance(j, ModelJudge):
                j.check()
        # inputs are in memory now; --force never removes a file the command was handed
        self.store = RunStore(out, self.config_record, force=force, keep=[f for fs in given.values() for f in fs])
        self.out = self.store.out
        self.timings: dict[str, float] = {}
        self.stage_name = "setup"
        self.results: dict[str, "StageResult"] = {}
        self._plans: dict[tuple[str, ...], BatchPlan] = {}

    # ---------------------------------------------------------------- what a study says
    def resolve_layers(self) -> dict:
        """The configuration's layer lists for this model (``config.resolve(n_layers)``)."""
        return self.cfg.resolve(self.cm.n_layers)

    def read_prompts(self) -> dict[str, PromptSet]:  # pragma: no cover - overridden
        """The study's prompt sets by role (what the CLI reads before loading the model)."""
        raise NotImplementedError

    def record_extra(self) -> dict:
        """More of the run's identity (``config.json``): e.g. the persona sets read."""
        return {}

    def given(self) -> dict[str, list[Path]]:
        """Input files the configuration names (checksummed into the run's identity, never
        removed by ``--force``): ``{field: [files]}``."""
        return {}

    def check_inputs(self) -> None:
        """Checks that need the model, before anything is written (default: prompt lengths)."""

    # ---------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Time a block under ``name`` (``run_info.stage_seconds``); it is the current stage meanwhile."""
        self.stage_name = name
        t0 = time.perf_counter()
        log.info("stage %s", name)
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    @property
    def boot(self) -> dict:
        """The bootstrap's settings as the statistics take them (``**ctx.boot``): ``{"n_boot", "seed"}``."""
        return {"n_boot": self.cfg.bootstrap, "seed": self.cfg.seed}

    def result(self, stage: str) -> Any:
        """The result of a stage that already ran."""
        if stage not in self.results:
            raise ConfigError(f"stage {stage!r} has not run", hint="run the stages it needs first")
        return self.results[stage]

    def check_lengths(self, reserve_of: Mapping[str, int], limit_of: Mapping[str, int | None] = {}) -> None:
        """Every prompt of each set fits the context window with the tokens it will generate
        (``reserve_of[role]``; only the first ``limit_of[role]`` prompts of a set are read)."""
        cm = self.cm
        frame = len(cm.encode(cm.format([""]))[0])  # the template and system prompt alone
        most = max([0, *reserve_of.values()])
        if frame + most > cm.n_ctx and cm.system_prompt:
            raise ConfigError(f"the system prompt (system_prompt, --system-prompt) makes the chat template around an "
                              f"empty prompt {frame} tokens{f' (+{most} to generate)' if most else ''}, longer than "
                              f"the context window of {cm.n_ctx} tokens",
                              hint="shorten the system prompt" + (", or lower --max-new-tokens" if most else ""))
        for key, ps in self.prompts.items():
            texts = list(ps)[: limit_of.get(key)]
            reserve = reserve_of.get(key, 0)
            ids = cm.encode(cm.format(texts))
            for i, x in enumerate(ids):
                if len(x) + reserve > cm.n_ctx:
                    raise ConfigError(
                        f"prompt {i + 1} of {ps.source or ps.name} ({key}) is {len(x)} tokens"
                        f"{f' (+{reserve} to generate)' if reserve else ''}, longer than the context window of "
                        f"{cm.n_ctx} tokens", hint="shorten or remove it" + (", or lower --max-new-tokens" if reserve else ""))

    def diff_in_means_grid(self, harmful: Sequence[str], harmless: Sequence[str], *, stem: str = "refusal_grid",
                           timer: str = "refusal_grid") -> DirectionGrid:
        """The diff-in-means candidates of these prompts at every post-instruction position and
        layer, computed once and kept as ``directions/STEM`` (a damaged copy is recomputed)."""
        path = self.out / "directions" / stem
        files = [path.with_name(path.name + ext) for ext in (".json", ".safetensors")]
        grid = self.store.read_back(f"the {stem.replace('_', ' ')}", files,
                                    lambda: DirectionGrid.load(path, chat_model=self.cm))
        if grid is None:
            with self.timer(timer):
                extract_directions(self.cm, harmful, harmless, batch_size=self.cfg.batch_size,
                                   progress=self.progress).save(path)
            grid = DirectionGrid.load(path, chat_model=self.cm)  # as it reads back: a resumed run sees the same
        return grid

    def plan(self, prompts: Sequence[str]) -> BatchPlan:
        """The batch plan of these prompts (made once, then reused)."""
        key = tuple(prompts)
        if key not in self._plans:
            self._plans[key] = plan_batches(self.cm, self.cm.format(list(prompts)), batch_size=self.cfg.batch_size,
                                            keep_last=len(self.cm.post_instruction_positions))
        return self._plans[key]

    def forward(self, plan: BatchPlan, interventions: Sequence[Intervention], *, capture: Sequence[int] = (),
                start_layer: int = 0, start_resid: Sequence[torch.Tensor] | None = None, logits: bool = False,
                desc: str | None = None) -> "Forward":
        """One pass of ``plan`` under ``interventions``
        (:func:`~persona_refusal.evaluation.first_token_outcome`): the greedy first token's
        refusal and log-odds per prompt, the next-token logits (``logits=True``), and the full
        per-row residual stream at the ``resid_pre`` of each layer of ``capture`` (one tensor per
        batch). With ``start_layer`` > 0 it starts at that block from ``start_resid`` (a
        capture of the unedited run at that layer: edits acting before it are not re-applied)."""
        out = first_token_outcome(self.cm, plan, interventions, keep_logits=logits, capture_layers=capture,
                                  start_layer=start_layer, start_resid=start_resid, desc=desc,
                                  progress=self.progress and desc is not None)
        return Forward(out.resid, out.refused.tolist(), out.scores.tolist(), out.logits)

    def stop_when(self):
        """The early-stopping rule of judged replies (``None``: every reply runs to full length).

        With ``early_stop``, a reply stops once every judge's label is final
        (:func:`persona_refusal.evaluation.decided_by`); a custom judge without a
        ``decided`` method turns early stopping off. A model judge is decided only once
        its window is written (``len(text) >= 500``), so with one, replies stop there."""
        if not self.cfg.early_stop:
            return None
        judges = list(self.judges.values())
        if self.judge is not None:
            if not callable(getattr(self.judge, "decided", None)):
                return None
            judges.append(self.judge)
        return decided_by(*judges)

    def judged(self, stage: str, prompts: Sequence[str], conditions: Mapping[str, Sequence[Intervention]],
               desc: str, *, max_new_tokens: int | None = None, group_rows: int | None = None) -> dict[str, dict]:
        """Generate and judge under several conditions in shared batches; checkpoint them.

        Returns condition key → ``{"labels", "labels_by_judge", "replies", "refused",
        "scores"}``: ``labels`` by the headline judge (``judge``, or the custom one), and
        each judge of :attr:`judges` by name (``strict``, ``lenient``, and ``model:NAME``
        when a model judge is the headline one). A resumed run reads stored conditions
        back: nothing is generated or judged again for them.

        Conditions are generated in groups of about ``group_rows`` (condition, prompt) rows
        (default: all at once), each group checkpointed in one write, in the order given:
        the groups do not depend on what is stored, so a resumed run never regenerates a
        condition in other batches (other floats) than a fresh run.
        """
        keys = list(conditions)
        per = len(keys) if group_rows is None else max(1, group_rows // max(1, len(prompts)))
        groups = [keys[i:i + per] for i in range(0, len(keys), per)] or [[]]
        for n, group in enumerate(groups):
            missing = {k: conditions[k] for k in group if not self.store.has(stage, k)}
            if not missing:
                continue
            label = desc if len(groups) == 1 else f"{desc} {n + 1}/{len(groups)}"
            headline = self.judge if self.judge is not None else self.judges[self.judge_key]
            got = judged_conditions(self.cm, list(prompts), missing, judge=headline, judges=self.judges,
                                    max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                    batch_size=self.cfg.batch_size, desc=label, progress=self.progress,
                                    stop_when=self.stop_when())
            done = {key: j.to_dict() for key, j in got.items()}
            # one write per group: a resumed run never regenerates a subset in other batches (other floats)
            self.store.put_many(stage, done)
        return {k: self.store.get(stage, k) for k in conditions}
