"""The refusal-direction study: the refusal-vs-KL front over every diff-in-means candidate,
named selection rules, and directional ablation vs affine concept editing (ACE) vs
activation addition on the test split.

Context
-------
Arditi et al. (2024) remove refusal by ablating one direction, chosen among diff-in-means
candidates by filters on first-token scores; Marshall et al. argue that refusal is an
*affine* function of the activation, so edits should move it relative to a reference
point (ACE, ``x − ((x − μ)·r̂) r̂ + α·r``). This study measures both on any chat model, as
registered stages (:mod:`persona_refusal.study.refusal.stages`, one file each):

==========  =====================================================================
``grid``    diff-in-means candidates, every post-instruction position × layer (train)
``front``   every candidate on val: bypass (first token), KL, induce; judged ablated
            replies for the most promising candidates and per-layer directions
``select``  the direction by each named rule (``arditi``, ``kl_budget``, ``knee``)
``calibrate``  the addition strength, on val
``edits``   on test: ablation, ACE α = 0 (erase) on harmful; addition, ACE α = 1
            (induce) on harmless; every edit on borderline prompts; KL, degenerate
            share; paired bootstrap differences between edits
==========  =====================================================================

Selection and calibration read val prompts only; the test split only reports.
``persona-refusal refusal --out runs/refusal`` runs it (resumable, checkpointed),
:func:`run_refusal_study` from Python.
"""

from __future__ import annotations

import os
from typing import Sequence

from persona_refusal.results import RefusalResults
from persona_refusal.study.refusal.config import (REFUSAL_PRESETS, EditsConfig, FrontConfig, RefusalConfig,
                                                  RefusalPromptsConfig, RuleConfig)
from persona_refusal.study.refusal.context import ROLES, RefusalContext, refusal_prompts
from persona_refusal.study.refusal.stages import STUDY, load_all
from persona_refusal.study.registry import StudyKind, randomness_record, register_study
from persona_refusal.study.runner import run_study

__all__ = ["RefusalConfig", "RefusalPromptsConfig", "FrontConfig", "RuleConfig", "EditsConfig", "REFUSAL_PRESETS",
           "RefusalContext", "refusal_prompts", "ROLES", "REFUSAL_SCHEMA", "REFUSAL_STUDY", "run_refusal_study"]

REFUSAL_SCHEMA = "persona_refusal.refusal/1"
"""The schema of the refusal study's ``results.json``."""


load_all()
REFUSAL_STUDY = register_study(StudyKind(
    name=STUDY, schema=REFUSAL_SCHEMA, config=RefusalConfig, context=RefusalContext, results=RefusalResults,
    randomness=randomness_record, title="refusal directions at their best: the refusal-vs-KL front, ablation vs ACE vs "
                                  "addition"))
"""The refusal study (``persona-refusal refusal``)."""


def run_refusal_study(config: RefusalConfig | None = None, out: str | os.PathLike = "runs/refusal", *,
                      stages: Sequence[str] | None = None, **kwargs) -> RefusalResults:
    """Run (or resume) the refusal study; write ``out/results.json`` and return it.

    ``kwargs`` are those of :func:`persona_refusal.study.run_study` (``chat_model``,
    ``force``, ``progress``, ``judge``).

    Example:
        >>> res = run_refusal_study(RefusalConfig.preset("smoke", model="tiny"), "runs/refusal-smoke",
        ...                         progress=False)                                  # doctest: +SKIP
        >>> res.refusal_direction.rule                                                # doctest: +SKIP
        'kl_budget'
    """
    return run_study(config or RefusalConfig(), out, stages=stages, **kwargs)
