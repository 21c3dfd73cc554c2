"""What every stage of the gating study works with: the model, the prompts, the run folder, the
cached residual streams, the steering builders and the one sweep primitive.

Context
-------
A sweep over layers × conditions is one loop, written once (in the spirit of
TransformerLens's ``generic_activation_patch``): :meth:`StudyContext.sweep` takes a
mapping ``{point key: interventions}``, and for each point not yet checkpointed it runs
the first-token measure (:func:`persona_refusal.evaluation.first_token_outcome`, through
:meth:`~persona_refusal.study.context.RunContext.forward`) and saves the point. Each point starts mid-model from a cached
residual stream: a cache made under edits ``J`` at layers ``< s`` equals the run under
``I ⊇ J`` at layer ``s`` whenever every edit of ``I`` that ``J`` lacks acts only at layers
``≥ s`` (:meth:`StudyContext.start_for` picks the cache with the latest such ``s``;
:meth:`persona_refusal.interventions.Intervention.min_layer` says where an edit starts).
So re-adding the refusal direction at layer 20 with the persona at 15 costs four blocks,
not twenty-four, and the rule "start from the baseline before the persona layer, from the
persona run after it" is derived, not written by hand in each stage.

Judged generations (:meth:`~persona_refusal.study.context.RunContext.judged`, on
:func:`persona_refusal.evaluation.judged_conditions`) batch several conditions into shared
forward passes and checkpoint them in one write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from persona_refusal.activations import BatchPlan
from persona_refusal.directions import Direction, LayerDirections
from persona_refusal.errors import ConfigError
from persona_refusal.interventions import AddVector, Intervention
from persona_refusal.prompts import Personas, PromptSet, bundled, load_prompts, resolve_personas
from persona_refusal.study.context import RunContext, file_hashes
from persona_refusal.study.gating.config import StudyConfig
from persona_refusal.study.stats import point_stats

if TYPE_CHECKING:
    from persona_refusal.evaluation import Judge
    from persona_refusal.models import ChatModel

__all__ = ["StudyContext", "Cache", "study_prompts", "study_personas", "input_hashes", "given_files", "given_stem",
           "check_persona_layers"]


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


def check_persona_layers(given: LayerDirections, n_layers: int) -> None:
    """Persona directions must cover every layer of the model."""
    if set(given.layers) != set(range(n_layers)):
        raise ConfigError(f"the given persona directions cover layers {given.layers[0]}..{given.layers[-1]}, "
                          f"not every layer 0..{n_layers - 1}",
                          hint="give persona directions made at every layer of this model")


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
    def eval_harmful(self) -> list[str]:
        """Every evaluation harmful prompt (the judged stages read them all)."""
        return list(self.prompts["eval_harmful"])

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
        """First-token statistics of a point, and its restoration of the persona → baseline
        gap of the sweep prompts (:func:`~persona_refusal.study.stats.point_stats`)."""
        return point_stats(point, self.reference if with_restoration else None, **self.boot)

    @property
    def reference(self) -> tuple[dict, dict]:
        """The baseline and persona points of the sweep prompts (``{"refused", "scores"}``
        each), the two ends of every restoration."""
        b, p = self.caches["baseline"], self.caches["persona"]
        return {"refused": b.refused, "scores": b.scores}, {"refused": p.refused, "scores": p.scores}
