"""The persona-gating study: does a compliant persona gate refusal, and at which layers?

Context
-------
Zhong & Li (2026) report that steering a chat model toward a *compliant persona*
suppresses refusal (Llama-3.1-8B-Instruct: 97% → 2% of harmful prompts refused), and that
re-adding the refusal direction on top restores refusal when it is added at *late* layers
but not at *early* ones. The study measures this on any chat model, at every layer, as a
sequence of registered stages (:mod:`persona_refusal.study.gating.stages`, one file each):

========================  ===============================================================
``refusal``               diff-in-means grid (train), Arditi et al.'s selection (val)
``persona``               the compliant-persona direction at every layer (rollouts)
``steering``              one common norm ``s`` for both directions
``eval``                  judged replies, baseline vs persona (all evaluation prompts)
``sweep_caches``          residual streams of the sweep prompts, baseline and persona
``alpha_sweep``           persona strength vs refusal and coherence
``gating``                refusal re-added at every layer, persona on; the control off
``confirm``               the early / late / best cells, judged from generated replies
``heatmap``               persona layer × re-add layer
``knockout``              persona direction ablated over windows, vs random directions
``patching``              the unsteered residual patched into the persona run
``projections``           computed vs expressed: projections on each layer's direction
``cosines``               persona · refusal cosine per layer, against a random null
========================  ===============================================================

Layers are ``resid_pre`` indices: "adding at block *b*'s output" in the paper is layer
``b + 1`` here. Sweeps use the first-token measures (one forward pass per point, starting
mid-model from cached residuals: :meth:`StudyContext.sweep`); generation confirms chosen
points. Every completed point is checkpointed in the output folder, so an interrupted run
resumes where it stopped and produces the same ``results.json`` (apart from ``run_info``).
``persona-refusal run --out runs/gating`` runs it,
:func:`persona_refusal.study.run_study` from Python.
"""

from __future__ import annotations

from persona_refusal.results import GatingResults
from persona_refusal.study.gating.config import (PRESETS, SECTIONS, HeatmapConfig, KnockoutConfig, PatchingConfig,
                                                 PersonaConfig, ProbesConfig, PromptsConfig, SelectionConfig,
                                                 SteeringConfig, StudyConfig, SweepConfig, paper_layers)
from persona_refusal.study.gating.context import Cache, StudyContext, study_personas, study_prompts
from persona_refusal.study.gating.stages import load_all
from persona_refusal.study.registry import GATING, StudyKind, randomness_record, register_study

__all__ = ["StudyConfig", "PromptsConfig", "SelectionConfig", "PersonaConfig", "SteeringConfig", "SweepConfig",
           "ProbesConfig", "HeatmapConfig", "KnockoutConfig", "PatchingConfig", "SECTIONS", "PRESETS", "paper_layers",
           "StudyContext", "Cache", "study_prompts", "study_personas", "RESULTS_SCHEMA", "READABLE_SCHEMAS",
           "GATING_STUDY"]

RESULTS_SCHEMA = "persona_refusal.gating/1"
"""The schema of the ``results.json`` this version writes."""
READABLE_SCHEMAS = (RESULTS_SCHEMA,)
"""Schemas of the gating study that :func:`persona_refusal.study.load_results` reads."""


def _randomness(cfg: StudyConfig) -> dict:
    return randomness_record(cfg, knockout_random_directions_seed=cfg.seed, cosine_null_seed=cfg.seed + 1)


load_all()
GATING_STUDY = register_study(StudyKind(
    name=GATING, schema=RESULTS_SCHEMA, config=StudyConfig, context=StudyContext, results=GatingResults,
    randomness=_randomness, title="persona gating of refusal (Zhong & Li 2026)"))
"""The persona-gating study (``persona-refusal run``)."""
