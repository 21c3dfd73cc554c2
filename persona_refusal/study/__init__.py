"""The studies and the machinery they share.

Context
-------
Two studies, each a package of the same shape (``config.py``, ``context.py``, ``stages/``
with one registered stage per file):

* :mod:`persona_refusal.study.gating`: does a compliant persona gate refusal, and at which
  layers? (``persona-refusal run``; :class:`StudyConfig`);
* :mod:`persona_refusal.study.refusal`: refusal directions at their best, ablation vs
  affine concept editing vs addition (``persona-refusal refusal``; :class:`RefusalConfig`).

What both use lives here: the registry of studies and stages
(:mod:`~persona_refusal.study.registry`), the runner that loops over a study's stages and
writes ``results.json`` (:mod:`~persona_refusal.study.runner`), the checkpointed run folder
(:mod:`~persona_refusal.study.store`), the base context (:mod:`~persona_refusal.study.context`),
the configuration building blocks (:mod:`~persona_refusal.study.config`), the statistics
(:mod:`~persona_refusal.study.stats`) and the baseline check
(:mod:`~persona_refusal.study.baseline`). :func:`run_study` runs either study: the class of
its configuration says which.
"""

from persona_refusal.study.config import Preset, SectionedConfig
from persona_refusal.study.gating import (GATING_STUDY, PRESETS, RESULTS_SCHEMA, StudyConfig, StudyContext,
                                          study_personas, study_prompts)
from persona_refusal.study.registry import (Stage, StageResult, StudyKind, get_stage, register, registered, stage_order,
                                            studies, study_kind)
from persona_refusal.study.runner import Study, load_results, preset_stages, run_study
from persona_refusal.study.refusal import REFUSAL_SCHEMA, REFUSAL_STUDY, RefusalConfig, run_refusal_study
from persona_refusal.study.stats import first_token_stats, outcome_rates, restoration
from persona_refusal.study.store import RunStore

__all__ = [
    "SectionedConfig", "StudyKind", "studies", "study_kind", "GATING_STUDY", "REFUSAL_STUDY", "REFUSAL_SCHEMA",
    "RefusalConfig", "run_refusal_study", "PRESETS", "Preset", "StudyConfig", "StudyContext", "study_prompts", "study_personas", "Stage", "StageResult", "get_stage",
    "register", "registered", "stage_order", "RESULTS_SCHEMA", "Study", "load_results", "preset_stages", "run_study",
    "first_token_stats", "outcome_rates", "restoration", "RunStore",
]
