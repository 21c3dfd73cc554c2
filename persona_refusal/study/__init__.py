"""The studies: the persona-gating study (does a compliant persona gate refusal, and at which
layers?) and the refusal-direction study (:mod:`persona_refusal.study.refusal`).

Context
-------
Zhong & Li (2026) report that steering a chat model toward a *compliant persona*
suppresses refusal (Llama-3.1-8B-Instruct: 97% → 2% of harmful prompts refused), and that
re-adding the refusal direction on top restores refusal when it is added at *late* layers
but not at *early* ones. The study measures this on any chat model, at every layer, as a
sequence of registered stages (:mod:`persona_refusal.study.stages`, one file each):

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
"""

from persona_refusal.study.config import PRESETS, Preset, SectionedConfig, StudyConfig
from persona_refusal.study.context import StudyContext, study_personas, study_prompts
from persona_refusal.study.registry import (Stage, StageResult, StudyKind, get_stage, register, registered, stage_order,
                                            studies, study_kind)
from persona_refusal.study.runner import GATING_STUDY, RESULTS_SCHEMA, Study, load_results, preset_stages, run_study
from persona_refusal.study.refusal import REFUSAL_SCHEMA, REFUSAL_STUDY, RefusalConfig, run_refusal_study
from persona_refusal.study.stats import first_token_stats, outcome_rates, restoration
from persona_refusal.study.store import RunStore

__all__ = [
    "SectionedConfig", "StudyKind", "studies", "study_kind", "GATING_STUDY", "REFUSAL_STUDY", "REFUSAL_SCHEMA",
    "RefusalConfig", "run_refusal_study", "PRESETS", "Preset", "StudyConfig", "StudyContext", "study_prompts", "study_personas", "Stage", "StageResult", "get_stage",
    "register", "registered", "stage_order", "RESULTS_SCHEMA", "Study", "load_results", "preset_stages", "run_study",
    "first_token_stats", "outcome_rates", "restoration", "RunStore",
]
