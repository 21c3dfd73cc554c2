"""The gating study's entry points and results helpers in one import.

The study lives in :mod:`persona_refusal.study.gating`: configuration in
:mod:`~persona_refusal.study.gating.config`, one file per stage in
:mod:`~persona_refusal.study.gating.stages`. This module re-exports what code that runs the study
or reads its ``results.json`` uses: :class:`StudyConfig`, :class:`Study`, :func:`run_study`,
:func:`load_results`, :func:`study_prompts`, the statistics helpers and the schema name.

Example:
    >>> from persona_refusal.experiments import StudyConfig
    >>> StudyConfig.preset("smoke", model="tiny").n_sweep
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


__all__ = ["StudyConfig", "Study", "run_study", "RESULTS_SCHEMA", "load_results", "study_prompts",
           "RunStore", "first_token_stats", "outcome_rates", "restoration", "MAX_STRENGTH"]
