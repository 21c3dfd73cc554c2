"""Measuring refusal: first-token scores, batched greedy generation, judges, rates with intervals.

Context
-------
Two measurements of refusal, a fast one and a faithful one:

* the **first-token outcome** (Arditi et al.; :mod:`~persona_refusal.evaluation.scores`):
  whether the greedy reply opens with a refusal token (``"I"``, ``"As"`` …) and the
  log-odds that it does, from one forward pass per prompt
  (:func:`first_token_outcome`). It is what sweeps over layers and strengths use;
* **generation + judge** (:mod:`~persona_refusal.evaluation.generation`,
  :mod:`~persona_refusal.evaluation.judges`): greedy decoding under the interventions
  (KV cache, shared prompt prefix, left padding), then a judge labels each reply
  *refusal*, *compliance* or *degenerate* (:func:`judged_conditions` does both for
  several named conditions at once). Two phrase judges are built in (:data:`JUDGES`, see
  ``docs/judges.md``): the *strict* :class:`SubstringJudge` and the *lenient*
  :class:`LenientJudge`; :class:`ModelJudge` asks a chat model; any callable with the
  :class:`Judge` signature plugs in instead. Judged generations can stop a reply as soon
  as every judge's label is final (``stop_when=decided_by(*judges)``), which leaves the
  labels unchanged and saves most of the decoding of refusals.

Rates come as :class:`Rate` with Wilson 95% intervals. :func:`kl_divergence_on` measures
how far an edit moves the next-token distribution on harmless prompts.
"""

from persona_refusal.evaluation.generation import (CHECK_EVERY, Generation, JudgedCondition, generate,
                                                   generate_conditions, generate_details, judged_conditions)
from persona_refusal.evaluation.judges import (DEFAULT_JUDGE_MODEL, JUDGE_ANSWERS, JUDGE_NAMES_HINT, JUDGE_RUBRIC,
                                               JUDGE_SYSTEM, JUDGE_WINDOW, JUDGES, LABELS, LENIENT_PATTERNS,
                                               REFUSAL_SUBSTRINGS, Judge, LenientJudge, ModelJudge, SubstringJudge,
                                               decided_by, get_judge, is_degenerate, is_refusal, judge_name,
                                               judge_responses)
from persona_refusal.evaluation.rate import Rate
from persona_refusal.evaluation.scores import (FirstTokenOutcome, first_token_outcome, first_token_refusal,
                                               kl_divergence_on, last_logits, refusal_scores)

__all__ = [
    "REFUSAL_SUBSTRINGS", "LENIENT_PATTERNS", "JUDGE_WINDOW", "Rate", "Judge", "SubstringJudge", "LenientJudge",
    "JUDGES", "ModelJudge", "DEFAULT_JUDGE_MODEL", "JUDGE_SYSTEM", "JUDGE_RUBRIC", "JUDGE_ANSWERS", "JUDGE_NAMES_HINT",
    "judge_name", "get_judge", "decided_by", "CHECK_EVERY", "is_refusal", "is_degenerate", "last_logits",
    "refusal_scores", "first_token_outcome", "first_token_refusal", "FirstTokenOutcome", "generate",
    "generate_details", "generate_conditions", "judged_conditions", "JudgedCondition", "Generation",
    "judge_responses", "kl_divergence_on", "LABELS",
]
