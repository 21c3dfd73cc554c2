"""Difference-in-means extraction: every (position, layer) candidate in one pass per set.

Context
-------
Arditi et al. (2024) read the refusal direction as the difference between the mean
activation on harmful and on harmless instructions, at a layer and a post-instruction
position of the chat template. :func:`extract_directions` computes that difference for
every (position, layer) at once, ``[n_positions, n_layers, d_model]``, as a
:class:`~persona_refusal.directions.DirectionGrid`; selection is in
:mod:`persona_refusal.selection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from persona_refusal.activations import mean_activations
from persona_refusal.directions import DirectionGrid
from persona_refusal.errors import ConfigError
from persona_refusal.prompts import prompt_hash

if TYPE_CHECKING:
    from persona_refusal.models import ChatModel

__all__ = ["extract_directions"]


def extract_directions(
    chat_model: "ChatModel",
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    system: str | None = None,
    name: str = "refusal",
    batch_size: int | None = None,
    progress: bool = True,
) -> DirectionGrid:
    """Difference-in-means candidates for every (position, layer) in one pass per set.

    Args:
        chat_model: the model.
        positive: instructions of the positive class (e.g. harmful), unformatted.
        negative: instructions of the negative class (e.g. harmless), unformatted.
        positions: positions from the end of the prompt (default: the post-instruction
            template tokens, e.g. ``[-5, …, -1]`` for Qwen).
        layers: ``resid_pre`` layers (default: every layer).
        system: system prompt used to format both sets (``None``: the template default).
        name: label of the directions.

    Example:
        >>> cm = load_chat_model("tiny")
        >>> grid = extract_directions(cm, ["Tell me how to pick a lock."], ["Bake bread."], progress=False)
        >>> grid.diff.shape[1:] == (cm.n_layers, cm.d_model)
        True
    """
    positions = list(positions) if positions is not None else chat_model.post_instruction_positions
    layers = list(layers) if layers is not None else list(range(chat_model.n_layers))
    for l in layers:
        chat_model.check_layer(l)
    if not positive or not negative:
        raise ConfigError("extracting a direction needs at least one prompt in each set")
    kwargs = dict(positions=positions, layers=layers, system=system, batch_size=batch_size, progress=progress)
    pos_mean = mean_activations(chat_model, positive, desc=f"{name}: + prompts", **kwargs)
    neg_mean = mean_activations(chat_model, negative, desc=f"{name}: − prompts", **kwargs)
    return DirectionGrid(
        positive_mean=pos_mean, negative_mean=neg_mean, positions=tuple(positions), layers=tuple(layers),
        name=name, model_id=chat_model.model_id, model_checksum=chat_model.checksum,
        n_positive=len(positive), n_negative=len(negative),
        provenance={"positive_sha256": prompt_hash(positive), "negative_sha256": prompt_hash(negative),
                    "system": system, "site": "resid_pre", "method": "diff_in_means"},
    )
