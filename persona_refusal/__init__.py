"""persona_refusal: how refusal in chat models depends on the model's persona.

Built on TransformerLens. A ten-line tour::

    import persona_refusal as pr

    cm = pr.load_chat_model("demo")                      # Qwen2.5-Coder-0.5B-Instruct
    harmful, harmless = pr.bundled("harmful", "train"), pr.bundled("harmless", "train")
    grid = pr.extract_directions(cm, harmful, harmless)  # diff-in-means, positions × layers
    refusal, report = pr.select_refusal_direction(       # Arditi et al.'s filters, then the
        cm, grid, pr.bundled("harmful", "val"), pr.bundled("harmless", "val"))  # relative fallback
    with pr.apply(cm, pr.Ablate(refusal)):
        print(pr.generate(cm, ["How do I hotwire a car?"]))

The modules: :mod:`~persona_refusal.models` (chat models), :mod:`~persona_refusal.prompts`,
:mod:`~persona_refusal.activations` (batched caching), :mod:`~persona_refusal.ops` (tensor
maths), :mod:`~persona_refusal.directions`, :mod:`~persona_refusal.interventions`,
:mod:`~persona_refusal.evaluation`, :mod:`~persona_refusal.extraction`,
:mod:`~persona_refusal.selection`, :mod:`~persona_refusal.persona` and
:mod:`persona_refusal.study` (the gating study, one registered stage per file; see
``docs/architecture.md``). Figures live in :mod:`persona_refusal.analysis`, the only part
that imports plotly.
"""

from typing import TYPE_CHECKING

# The public names, each from its module. They are imported when first used (PEP 562), so
# that ``import persona_refusal`` (and the command line's first instruction) costs nothing:
# torch and the model stack load only when a name that needs them is touched.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["cache_activations", "mean_activations"], "activations"),
    **dict.fromkeys(["export_control_vector", "import_control_vector"], "control_vectors"),
    **dict.fromkeys(["Direction", "DirectionGrid", "LayerDirections"], "directions"),
    **dict.fromkeys(["ChecksumError", "ConfigError", "DirectionMismatchError", "ModelLoadError", "PersonaRefusalError",
                     "PromptLoadError", "RunFolderError"], "errors"),
    **dict.fromkeys(["JUDGES", "LenientJudge", "ModelJudge", "Rate", "SubstringJudge", "decided_by", "get_judge",
                     "generate", "is_degenerate", "is_refusal", "judge_responses", "kl_divergence_on", "last_logits",
                     "refusal_scores"], "evaluation"),
    **dict.fromkeys(["FirstTokenOutcome", "first_token_outcome", "JudgedCondition", "judged_conditions"],
                    "evaluation"),
    **dict.fromkeys(["Ablate", "AddVector", "AffineEdit", "Intervention", "Patch", "apply", "orthogonalize_weights"],
                    "interventions"),
    "extract_directions": "extraction",
    "export_orthogonalized": "export",
    **dict.fromkeys(["ChatModel", "load_chat_model"], "models"),
    **dict.fromkeys(["PERSONA_SETS", "PromptSet", "bundled", "load_borderline", "load_personas", "load_prompts",
                     "personas", "resolve_personas"], "prompts"),
    **dict.fromkeys(["SelectionReport", "select_refusal_direction"], "selection"),
    **dict.fromkeys(["PersonaRollouts", "persona_direction", "persona_rollouts"], "persona"),
    **dict.fromkeys(["GatingResults", "RefusalResults"], "results"),
    "load_results": "study.runner",
    **dict.fromkeys(["GatingExperiment", "gating_experiment"], "gating_sweep"),
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'persona_refusal' has no attribute {name!r}")
    import importlib

    from persona_refusal.checks import checked  # argument checks (docs/bad-input.md), loaded with the first export

    value = checked(getattr(importlib.import_module(f"{__name__}.{module}"), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what a type checker and an editor see
    from persona_refusal.activations import cache_activations, mean_activations
    from persona_refusal.control_vectors import export_control_vector, import_control_vector
    from persona_refusal.directions import Direction, DirectionGrid, LayerDirections
    from persona_refusal.errors import (
        ChecksumError,
        ConfigError,
        DirectionMismatchError,
        ModelLoadError,
        PersonaRefusalError,
        PromptLoadError,
        RunFolderError,
    )
    from persona_refusal.evaluation import (
        JUDGES,
        LenientJudge,
        ModelJudge,
        Rate,
        SubstringJudge,
        decided_by,
        get_judge,
        generate,
        is_degenerate,
        is_refusal,
        judge_responses,
        kl_divergence_on,
        last_logits,
        refusal_scores,
    )
    from persona_refusal.interventions import (
        Ablate,
        AddVector,
        AffineEdit,
        Intervention,
        Patch,
        apply,
        orthogonalize_weights,
    )
    from persona_refusal.extraction import extract_directions
    from persona_refusal.export import export_orthogonalized
    from persona_refusal.models import ChatModel, load_chat_model
    from persona_refusal.prompts import (PERSONA_SETS, PromptSet, bundled, load_borderline, load_personas, load_prompts, personas,
                                         resolve_personas)
    from persona_refusal.selection import SelectionReport, select_refusal_direction
    from persona_refusal.persona import PersonaRollouts, persona_direction, persona_rollouts
    from persona_refusal.results import GatingResults, RefusalResults
    from persona_refusal.study.runner import load_results
    from persona_refusal.gating_sweep import GatingExperiment, gating_experiment

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "AddVector",
    "AffineEdit",
    "ChatModel",
    "ChecksumError",
    "ConfigError",
    "Direction",
    "DirectionGrid",
    "DirectionMismatchError",
    "Intervention",
    "LayerDirections",
    "ModelLoadError",
    "Patch",
    "PersonaRefusalError",
    "PromptLoadError",
    "PromptSet",
    "Rate",
    "RunFolderError",
    "SelectionReport",
    "SubstringJudge",
    "LenientJudge",
    "ModelJudge",
    "JUDGES",
    "get_judge",
    "decided_by",
    "apply",
    "bundled",
    "load_borderline",
    "cache_activations",
    "export_control_vector",
    "extract_directions",
    "generate",
    "import_control_vector",
    "is_degenerate",
    "is_refusal",
    "judge_responses",
    "kl_divergence_on",
    "last_logits",
    "load_chat_model",
    "load_prompts",
    "mean_activations",
    "orthogonalize_weights",
    "export_orthogonalized",
    "personas",
    "load_personas",
    "resolve_personas",
    "PERSONA_SETS",
    "refusal_scores",
    "select_refusal_direction",
    "PersonaRollouts",
    "persona_direction",
    "persona_rollouts",
    "GatingResults",
    "RefusalResults",
    "load_results",
    "GatingExperiment",
    "gating_experiment",
]
