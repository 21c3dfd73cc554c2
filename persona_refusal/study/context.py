"""What every stage of the study works with: the model, the prompts, the run folder, the
cached residual streams, the steering builders and the one sweep primitive.

Context
-------
A sweep over layers × conditions is one loop, written once (in the spirit of
TransformerLens's ``generic_activation_patch``): :meth:`StudyContext.sweep` takes a
mapping ``{point key: interventions}``, and for each point not yet checkpointed it runs
the first-token measure and saves the point. Each point starts mid-model from a cached
residual stream: a cache made under edits ``J`` at layers ``< s`` equals the run under
``I ⊇ J`` at layer ``s`` whenever every edit of ``I`` that ``J`` lacks acts only at layers
``≥ s`` (:meth:`StudyContext.start_for` picks the cache with the latest such ``s``;
:meth:`persona_refusal.interventions.Intervention.min_layer` says where an edit starts).
So re-adding the refusal direction at layer 20 with the persona at 15 costs four blocks,
not twenty-four, and the rule "start from the baseline before the persona layer, from the
persona run after it" is derived, not written by hand in each stage.

Judged generations (:meth:`StudyContext.judged`) batch several conditions into shared
forward passes and checkpoint them in one write.
"""

from __future__ import annotations

import dataclasses

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from persona_refusal import ops
from persona_refusal.activations import BatchPlan, plan_batches, run_plan
from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.evaluation import (JUDGES, Judge, ModelJudge, decided_by, generate_conditions, get_judge,
                                        judge_name, judge_responses)
from persona_refusal.extraction import extract_directions
from persona_refusal.interventions import AddVector, Intervention
from persona_refusal.prompts import Personas, PromptSet, bundled, load_prompts, resolve_personas
from persona_refusal.storage import sha256_file
from persona_refusal.study.config import StudyConfig
from persona_refusal.study.stats import first_token_stats, restoration
from persona_refusal.study.store import RunStore

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel
    from persona_refusal.study.registry import StageResult

__all__ = ["RunContext", "StudyContext", "Cache", "Forward", "study_prompts", "study_personas", "input_hashes", "given_files", "given_stem",
           "check_dtype", "model_dtype"]

log = logging.getLogger(__name__)


@dataclass
class Cache:
    """Residual streams of one condition on one plan, kept for runs that resume mid-model."""

    name: str
    """Label (``baseline``, ``persona``, ``persona@12`` …)."""
    interventions: tuple[Intervention, ...]
    """The edits it was made under (compared by identity: the context's builders memoise)."""
    last_edit_layer: int
    """The last block any of its edits acts at (-1: none). It is a valid start at layers after it."""
    resid: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """``resid_pre`` layer → one ``[rows, pos, d_model]`` tensor per batch of the plan."""
    refused: list[bool] = field(default_factory=list)
    """Greedy first token is a refusal token, per prompt."""
    scores: list[float] = field(default_factory=list)
    """First-token refusal log-odds, per prompt."""


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


def study_prompts(config: StudyConfig) -> dict[str, PromptSet]:
    """The six prompt sets of a study (given files, else the bundled splits), trimmed to the
    configured sizes. Cheap: the CLI calls it before loading the model, so a bad prompt
    file fails in a second rather than after a minute of model loading."""
    c = config

    def get(path, label, split, n, field=None):
        ps = load_prompts(path, label=label) if path else bundled(label, split)
        return ps.take(n, field, f"--{field.replace('_', '-')}") if field else ps

    sets = {
        "train_harmful": get(c.train_harmful, "harmful", "train", c.n_train, "n_train"),
        "train_harmless": get(c.train_harmless, "harmless", "train", c.n_train, "n_train"),
        "val_harmful": get(c.val_harmful, "harmful", "val", c.n_val, "n_val"),
        "val_harmless": get(c.val_harmless, "harmless", "val", c.n_val, "n_val"),
        "eval_harmful": get(c.eval_harmful, "harmful", "test", c.n_eval, "n_eval"),
        "eval_harmless": get(c.eval_harmless, "harmless", "test", None),
    }
    if c.n_sweep > len(sets["eval_harmful"]):
        raise ConfigError(f"n_sweep {c.n_sweep} exceeds the {len(sets['eval_harmful'])} evaluation harmful prompts",
                          hint="lower n_sweep (--n-sweep) or give more evaluation prompts")
    if c.n_coherence > len(sets["eval_harmless"]):
        raise ConfigError(f"n_coherence {c.n_coherence} exceeds the {len(sets['eval_harmless'])} evaluation harmless prompts",
                          hint="lower n_coherence or give more evaluation harmless prompts")
    if c.control_harmless and (c.n_control_harmless or 0) > len(sets["eval_harmless"]):
        raise ConfigError(f"n_control_harmless {c.n_control_harmless} exceeds the {len(sets['eval_harmless'])} "
                          "evaluation harmless prompts", hint="lower --n-control-harmless or give more harmless prompts")
    return sets


def study_personas(config: StudyConfig) -> dict[str, Personas]:
    """The persona set of the study and those the ``persona_sets`` stage compares, read
    (a bad persona file fails before the model loads)."""
    names = [config.personas] + [n for n in config.persona_sets if n != config.personas]
    return {name: resolve_personas(name) for name in names}


def given_files(config: StudyConfig) -> dict[str, list[Path]]:
    """The files of the saved directions a configuration names: ``NAME.json`` and
    ``NAME.safetensors`` of each (``ConfigError`` when one is missing)."""
    out = {}
    for name in ("refusal_direction", "persona_direction"):
        path = getattr(config, name)
        if path:
            stem = given_stem(path)
            files = [stem.with_name(stem.name + ext) for ext in (".json", ".safetensors")]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConfigError(f"{name} file {missing[0]} does not exist",
                                  hint="check the path: a saved direction is a NAME.json + NAME.safetensors pair")
            out[name] = files
    return out


def given_stem(path) -> Path:
    """A saved direction's path without its ``.json`` / ``.safetensors`` suffix."""
    stem = Path(path)
    return stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem


def input_hashes(config: StudyConfig) -> dict:
    """sha256 of the saved directions a configuration names (a changed file is a new run)."""
    return file_hashes(given_files(config))


def file_hashes(given: Mapping[str, Sequence[Path]]) -> dict:
    """``{field: {file name: sha256}}`` of the input files a run is given."""
    return {name: {f.name: sha256_file(f) for f in files} for name, files in given.items()}


def model_dtype(chat_model: "ChatModel") -> str:
    """The dtype the model runs in, by name (``float32``, ``bfloat16`` …)."""
    return str(chat_model.model.cfg.dtype).replace("torch.", "")


def check_dtype(chat_model: "ChatModel", config: StudyConfig) -> None:
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


def check_persona_layers(given: LayerDirections, n_layers: int) -> None:
    """Persona directions must cover every layer of the model."""
    if set(given.layers) != set(range(n_layers)):
        raise ConfigError(f"the given persona directions cover layers {given.layers[0]}..{given.layers[-1]}, "
                          f"not every layer 0..{n_layers - 1}",
                          hint="give persona directions made at every layer of this model")


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

    def first_token(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy first token is a refusal token; refusal log-odds (per row)."""
        ids = list(self.cm.refusal_token_ids)
        return torch.isin(logits.argmax(-1), torch.tensor(ids)), ops.refusal_log_odds(logits, ids)

    def forward(self, plan: BatchPlan, interventions: Sequence[Intervention], *, capture: Sequence[int] = (),
                start_layer: int = 0, start_resid: Sequence[torch.Tensor] | None = None, logits: bool = False,
                desc: str | None = None) -> "Forward":
        """One pass of ``plan`` under ``interventions``: the greedy first token's refusal and
        log-odds per prompt, the next-token logits (``logits=True``), and the full per-row
        residual stream at the ``resid_pre`` of each layer of ``capture`` (one tensor per
        batch). With ``start_layer`` > 0 it starts at that block from ``start_resid`` (a
        capture of the unedited run at that layer: edits acting before it are not re-applied)."""
        kw = {} if start_layer == 0 else {"start_layer": start_layer, "start_resid": start_resid}
        names = {self.cm.hook_name(l): None for l in capture}
        n = plan.n_prompts
        refused = torch.zeros(n, dtype=torch.bool)
        scores = torch.zeros(n, dtype=torch.float64)
        kept = torch.zeros(n, self.cm.model.cfg.d_vocab_out) if logits else None
        resid: dict[int, list[torch.Tensor]] = {l: [] for l in capture}
        for o in run_plan(self.cm, plan, interventions=interventions, capture=names or None, logits=True, desc=desc,
                          progress=self.progress and desc is not None, **kw):
            for l in capture:
                resid[l].append(o.captured[self.cm.hook_name(l)])
            r, sc = self.first_token(o.last_logits)
            refused[o.batch.rows], scores[o.batch.rows] = r, sc
            if kept is not None:
                kept[o.batch.rows] = o.last_logits.float().cpu()
        return Forward(resid, refused.tolist(), scores.tolist(), kept)

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
            gens = generate_conditions(self.cm, list(prompts), list(missing.values()),
                                       max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                       batch_size=self.cfg.batch_size, desc=label, progress=self.progress,
                                       stop_when=self.stop_when())
            done = {}
            for key, gen in zip(missing, gens):
                by_judge = {name: judge_responses(prompts, gen.texts, j) for name, j in self.judges.items()}
                labels = judge_responses(prompts, gen.texts, self.judge) if self.judge is not None \
                    else by_judge[self.judge_key]
                refused = gen.first_token_refusals(self.cm.refusal_token_ids).tolist()
                done[key] = {"labels": labels, "labels_by_judge": by_judge, "replies": gen.texts, "refused": refused,
                             "scores": gen.first_scores.tolist()}
            # one write per group: a resumed run never regenerates a subset in other batches (other floats)
            self.store.put_many(stage, done)
        return {k: self.store.get(stage, k) for k in conditions}


class StudyContext(RunContext):
    """The shared state of one persona-gating study run; stages read and extend it.

    Attributes (besides :class:`RunContext`'s):
        layers: every layer list resolved for this model (:meth:`StudyConfig.resolve`).
        prompts: the six prompt sets. personas: the persona sets read. caches: residual
        streams of the sweep prompts, by condition.
    """

    def __init__(self, chat_model: "ChatModel", config: StudyConfig, out, *, force: bool = False,
                 progress: bool = True, judge: "Judge | None" = None,
                 prompts: dict[str, PromptSet] | None = None) -> None:
        self.personas = study_personas(config)
        """Persona sets by name (or path): the study's own first."""
        self.given_refusal: Direction | None = None
        """The ``--refusal-direction`` given, read (and checksummed) before the run folder is opened."""
        self.given_persona: LayerDirections | None = None
        """The ``--persona-direction`` given, read (and checksummed) before the run folder is opened."""
        self.caches: dict[str, Cache] = {}
        self._builders: dict[tuple, Intervention] = {}
        super().__init__(chat_model, config, out, force=force, progress=progress, judge=judge, prompts=prompts)

    def read_prompts(self) -> dict[str, PromptSet]:
        return study_prompts(self.cfg)

    def record_extra(self) -> dict:
        return {"personas": {name: p.describe() for name, p in self.personas.items()}}

    def given(self) -> dict[str, list[Path]]:
        return given_files(self.cfg)

    @property
    def persona_layer(self) -> int:
        """The layer where persona steering is added (resolved)."""
        return self.layers["persona_layer"]

    @property
    def alpha(self) -> float:
        """The persona strength: calibrated on val (stage ``calibrate``) or as configured."""
        cal = self.results.get("calibrate")
        return cal.alpha if cal is not None and cal.alpha is not None else self.cfg.persona_alpha

    @property
    def betas(self) -> list[float]:
        """Re-add strengths: ``beta_ratios``·α when ratios are set, else ``betas``."""
        if self.cfg.beta_ratios:
            return [round(r * self.alpha, 6) for r in self.cfg.beta_ratios]
        return list(self.cfg.betas)

    @property
    def control_betas(self) -> list[float]:
        """Re-add strengths of the control sweep: the gating ones when given as ratios of α."""
        return self.betas if self.cfg.beta_ratios else list(self.cfg.control_betas)

    def check_inputs(self) -> None:
        """Fail before anything is written: selection positions, prompt lengths, given directions."""
        cm, c = self.cm, self.cfg
        allowed = cm.post_instruction_positions
        bad = [p for p in c.selection_positions if p not in allowed]
        if bad:
            raise ConfigError(f"selection position {bad[0]} is out of range: this model's post-instruction positions "
                              f"are {allowed[0]}..{allowed[-1]}", hint=f"use positions between {allowed[0]} and -1")
        self.check_lengths({k: c.max_new_tokens for k in self.prompts if k.startswith("eval")},
                           {"eval_harmless": max(c.n_coherence, (c.n_control_harmless or 10**9) if c.control_harmless
                                                 else 0)})
        if c.refusal_direction:
            given = Direction.load(c.refusal_direction, chat_model=cm, allow_transfer=c.allow_transfer)
            cm.check_layer(given.layer, what="the given refusal direction's layer")
            self.given_refusal = given
        if c.persona_direction:
            given_p = LayerDirections.load(c.persona_direction, chat_model=cm, allow_transfer=c.allow_transfer)
            check_persona_layers(given_p, cm.n_layers)
            self.given_persona = given_p

    @property
    def sweep_prompts(self) -> list[str]:
        """The first ``n_sweep`` evaluation harmful prompts (every first-token sweep)."""
        return list(self.prompts["eval_harmful"])[: self.cfg.n_sweep]

    @property
    def coherence_prompts(self) -> list[str]:
        """The first ``n_coherence`` evaluation harmless prompts."""
        return list(self.prompts["eval_harmless"])[: self.cfg.n_coherence]

    @property
    def sweep_plan(self) -> BatchPlan:
        """The plan of :attr:`sweep_prompts`."""
        return self.plan(self.sweep_prompts)

    def rollout_options(self) -> dict:
        """The keyword arguments of :func:`persona_refusal.persona.persona_rollouts` this
        configuration gives (every persona set of the run is made the same way)."""
        c = self.cfg
        return {"n_questions": c.persona_questions, "max_new_tokens": c.persona_max_new_tokens,
                "filter": c.persona_filter, "balance": c.persona_balance, "samples": c.persona_samples,
                "temperature": c.persona_temperature, "seed": c.seed, "judge": self.judge,
                "batch_size": c.batch_size, "progress": self.progress}

    @property
    def harmless_control_prompts(self) -> list[str]:
        """The harmless evaluation prompts of ``control_harmless`` (the first ``n_control_harmless``)."""
        return list(self.prompts["eval_harmless"])[: self.cfg.n_control_harmless]

    # ---------------------------------------------------------------- steering builders
    def _memo(self, key: tuple, make) -> Intervention:
        if key not in self._builders:
            self._builders[key] = make()
        return self._builders[key]

    def steer(self, alpha: float | None = None, layer: int | None = None) -> AddVector:
        """Persona steering: ``α·s·p̂`` added at ``resid_pre`` of ``layer`` (default: the
        configured α and persona layer). The same arguments give the same object."""
        alpha = self.alpha if alpha is None else alpha
        layer = self.persona_layer if layer is None else layer
        vec = self.result("steering").persona_vector
        return self._memo(("steer", alpha, layer),
                          lambda: AddVector(vec, alpha, layer=layer, allow_transfer=self.cfg.allow_transfer))

    def readd(self, beta: float, layer: int) -> AddVector:
        """The refusal direction re-added: ``β·s·r̂`` at ``resid_pre`` of ``layer``."""
        vec = self.result("steering").refusal_vector
        return self._memo(("readd", beta, layer),
                          lambda: AddVector(vec, beta, layer=layer, allow_transfer=self.cfg.allow_transfer))

    # ---------------------------------------------------------------- caches and the sweep primitive
    def start_for(self, interventions: Sequence[Intervention], layers_needed: Sequence[int] = ()) -> tuple[int, str | None]:
        """The latest block a run under ``interventions`` can start at, and the cache to start from.

        A cache made under edits ``J`` is a valid start at block ``s`` when ``J`` is a subset
        of ``interventions``, every edit of ``J`` acts before ``s``, and every other edit
        acts at ``s`` or later. Ties go to the cache registered first (the baseline).
        ``(0, None)``: run from the embedding.
        """
        best: tuple[int, str | None] = (0, None)
        for name, cache in self.caches.items():
            if not all(any(j is i for i in interventions) for j in cache.interventions):
                continue
            rest = [i for i in interventions if not any(i is j for j in cache.interventions)]
            s = min([i.min_layer(self.cm) for i in rest], default=self.cm.n_layers - 1)
            if s <= cache.last_edit_layer or s not in cache.resid:
                continue
            if s > best[0]:
                best = (s, name)
        return best

    def _run_first_token(self, plan: BatchPlan, interventions: Sequence[Intervention], capture: Sequence[int] = (),
                         desc: str | None = None):
        start, base = self.start_for(interventions) if plan is self.sweep_plan else (0, None)
        out = self.forward(plan, interventions, capture=capture, start_layer=start,
                           start_resid=None if base is None else self.caches[base].resid[start], desc=desc)
        return start, base, out.resid, out.refused, out.scores

    def cache(self, name: str, interventions: Sequence[Intervention], layers: Sequence[int],
              desc: str | None = None) -> Cache:
        """Run the sweep prompts once under ``interventions``, keeping the full residual
        stream at ``layers`` and the first-token outcomes, as the cache ``name``.

        It starts from the best existing cache (:meth:`start_for`); layers below that start
        are shared with the cache it started from. A cache with the same edits that already
        holds ``layers`` is reused under the new name.
        """
        interventions = tuple(interventions)
        for c in self.caches.values():
            same = len(c.interventions) == len(interventions) and all(a is b for a, b in zip(c.interventions, interventions))
            if same and all(l in c.resid for l in layers):
                self.caches[name] = c
                return c
        plan = self.sweep_plan
        start, base, resid, refused, scores = self._run_first_token(plan, interventions, layers, desc)
        last = max((max(i.hook_layers(self.cm), default=-1) for i in interventions), default=-1)
        c = Cache(name, interventions, last, resid, refused, scores)
        if base is not None:
            for l, t in self.caches[base].resid.items():
                if l < start and l not in c.resid:
                    c.resid[l] = t
        self.caches[name] = c
        return c

    def drop_cache(self, name: str) -> None:
        """Free a cache (the memory of a full residual stream)."""
        self.caches.pop(name, None)

    def score(self, interventions: Sequence[Intervention], plan: BatchPlan | None = None) -> dict:
        """First-token outcomes per prompt of one condition: ``{"refused", "scores"}``."""
        _, _, _, refused, scores = self._run_first_token(plan or self.sweep_plan, interventions)
        return {"refused": refused, "scores": scores}

    def sweep(self, stage: str, points: Mapping[str, Sequence[Intervention]], *, desc: str | None = None) -> dict[str, dict]:
        """The sweep primitive: the first-token outcomes of every point, checkpointed one by one.

        Args:
            stage: checkpoint file (``checkpoints/STAGE.json``).
            points: point key → the interventions of that point (on the sweep prompts).
            desc: progress-bar label.

        Returns:
            point key → ``{"refused": [...], "scores": [...]}``, as it reads back from JSON
            (a resumed run sees exactly what a fresh run saw).
        """
        from tqdm.auto import tqdm  # here, not at import: in a notebook it warns once when first imported

        out = {}
        for key, ivs in tqdm(points.items(), desc=desc, disable=not self.progress or desc is None, leave=False):
            out[key] = self.store.point(stage, key, lambda ivs=ivs: self.score(ivs))
        return out

    def summarise(self, point: dict, with_restoration: bool = True) -> dict:
        """First-token statistics of a point, and its restoration of the persona → baseline gap."""
        out = first_token_stats(point["refused"], point["scores"])
        if with_restoration:
            b, p = self.caches["baseline"], self.caches["persona"]
            n, seed = self.cfg.bootstrap, self.cfg.seed
            out["restoration"], out["restoration_ci"] = restoration(point["refused"], b.refused, p.refused,
                                                                    n_boot=n, seed=seed)
            out["score_restoration"], out["score_restoration_ci"] = restoration(point["scores"], b.scores, p.scores,
                                                                                n_boot=n, seed=seed)
        return out
