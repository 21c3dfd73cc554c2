"""The gating study under its first names (kept so code written against them works).

The study lives in :mod:`persona_refusal.study`: configuration in
:mod:`~persona_refusal.study.config`, one file per stage in
:mod:`~persona_refusal.study.stages`. ``GatingConfig`` is :class:`StudyConfig`,
``GatingStudy`` is :class:`Study`, ``run_gating_study`` is :func:`run_study`.

Example:
    >>> from persona_refusal.experiments import GatingConfig, run_gating_study
    >>> GatingConfig.preset("smoke", model="tiny").n_sweep
    8
"""

from persona_refusal.study import (
    RESULTS_SCHEMA,
    RunStore,
    Study,
    StudyConfig,
    first_token_stats,
    load_results,
    outcome_rates,
    restoration,
    run_study,
    study_prompts,
)
from persona_refusal.study.config import MAX_STRENGTH

GatingConfig = StudyConfig
GatingStudy = Study
run_gating_study = run_study

__all__ = ["GatingConfig", "GatingStudy", "run_gating_study", "RESULTS_SCHEMA", "load_results", "study_prompts",
           "RunStore", "first_token_stats", "outcome_rates", "restoration", "MAX_STRENGTH"]
