"""Pure tensor maths for directions and edits — no model anywhere in this module.

Context
-------
A *direction* is a vector ``r`` in the residual stream (width ``d_model``). Three edits
recur in refusal work, and all of them act only on the component of an activation ``x``
along the unit vector ``r̂ = r / |r|``:

* **directional ablation** (Arditi et al. 2024): ``x' = x − (x·r̂) r̂``. The component along
  ``r̂`` becomes zero, everything orthogonal is untouched, and doing it twice is the
  same as doing it once.
* **activation addition**: ``x' = x + c·v``. With ``c = 0`` it is the identity.
* **affine concept editing** (ACE, Marshall et al.): refusal is affine, not linear, so
  edit relative to a reference point ``μ`` (the harmless mean) rather than the origin:
  ``x' = x − ((x − μ)·r̂) r̂ + α·r``. With ``α = 0`` every activation's projection is
  pinned to the reference's, ``x'·r̂ = μ·r̂``; with ``α = 1`` and ``r`` the raw
  difference of means it is pinned to the harmful mean's projection.

The functions here are what the hooks in :mod:`persona_refusal.interventions` call, and
they are tested as properties on random tensors. The edits return ``x``'s dtype on ``x``'s
device: a direction (float32, maybe on another device) is cast to the activation's, so
the same hook serves a float32 CPU model and a bfloat16 model on one or several GPUs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "unit",
    "project_out",
    "project_out_unit",
    "add_vector",
    "affine_edit",
    "affine_offset",
    "affine_edit_unit",
    "projection",
    "cosine",
    "diff_in_means",
    "refusal_log_odds",
    "kl_divergence",
    "wilson_interval",
    "random_unit_vectors",
]


def unit(v: Float[Tensor, "*batch d_model"], eps: float = 1e-12) -> Float[Tensor, "*batch d_model"]:
    """``v / |v|`` along the last dimension (a zero vector raises).

    Example:
        >>> unit(torch.tensor([3.0, 4.0]))
        tensor([0.6000, 0.8000])
    """
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm <= eps).any()):
        raise ValueError("cannot normalise a zero-length direction")
    return v / norm


def projection(
    x: Float[Tensor, "*batch d_model"], direction: Float[Tensor, "d_model"]
) -> Float[Tensor, "*batch"]:
    """Scalar projection ``x·r̂`` of each activation onto a direction.

    Example:
        >>> projection(torch.tensor([[1.0, 2.0]]), torch.tensor([0.0, 5.0]))
        tensor([2.])
    """
    return x @ unit(direction).to(device=x.device, dtype=x.dtype)


def project_out(
    x: Float[Tensor, "*batch d_model"], direction: Float[Tensor, "d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """Directional ablation ``x − (x·r̂) r̂``.

    Example:
        >>> x, r = torch.randn(3, 8), torch.randn(8)
        >>> torch.allclose(project_out(x, r) @ unit(r), torch.zeros(3), atol=1e-5)
        True
    """
    return project_out_unit(x, unit(direction))


def project_out_unit(
    x: Float[Tensor, "*batch d_model"], r_hat: Float[Tensor, "d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """Directional ablation ``x − (x·r̂) r̂`` for an already normalised ``r̂`` (cast to
    ``x``'s device and dtype, a no-op when it is in them already).

    This is the formula every ablation runs (:func:`project_out`, the ablation hooks,
    weight orthogonalisation); the hooks normalise once and call it on every pass.

    Example:
        >>> project_out_unit(torch.tensor([[1.0, 2.0]]), torch.tensor([0.0, 1.0]))
        tensor([[1., 0.]])
    """
    r_hat = r_hat.to(device=x.device, dtype=x.dtype)
    return x - (x @ r_hat).unsqueeze(-1) * r_hat


def add_vector(
    x: Float[Tensor, "*batch d_model"], vector: Float[Tensor, "d_model"], coeff: float
) -> Float[Tensor, "*batch d_model"]:
    """Activation addition ``x + c·v`` (``v`` cast to ``x``'s device and dtype).

    Example:
        >>> add_vector(torch.zeros(2, 3), torch.ones(3), 2.0)
        tensor([[2., 2., 2.],
                [2., 2., 2.]])
    """
    return x + coeff * vector.to(device=x.device, dtype=x.dtype)


def affine_edit(
    x: Float[Tensor, "*batch d_model"],
    direction: Float[Tensor, "d_model"],
    reference: Float[Tensor, "d_model"],
    alpha: float,
) -> Float[Tensor, "*batch d_model"]:
    """Affine concept edit ``x − ((x − μ)·r̂) r̂ + α·r`` (ACE, Marshall et al.).

    ``direction`` is ``r`` as given (its norm sets the unit of ``α``: with the raw
    difference of means, ``α = 1`` moves the projection to the harmful mean's);
    pass a unit vector to get ``x − ((x − μ)·r̂) r̂ + α r̂``.

    Example:
        >>> x, r, mu = torch.randn(5, 8), torch.randn(8), torch.randn(8)
        >>> torch.allclose(affine_edit(x, r, mu, 0.0) @ unit(r), (mu @ unit(r)).expand(5), atol=1e-5)
        True
    """
    # r̂ and the offset at the higher precision of the two (float32 for a bfloat16 x), then cast to x's
    work = torch.promote_types(direction.dtype, x.dtype)
    r = direction.to(dtype=work)
    offset = affine_offset(r, reference.to(device=r.device, dtype=work), alpha)
    return affine_edit_unit(x, unit(r), offset)


def affine_offset(
    direction: Float[Tensor, "d_model"], reference: Float[Tensor, "d_model"], alpha: float
) -> Float[Tensor, "d_model"]:
    """The constant part ``(μ·r̂) r̂ + α·r`` of the affine edit (one dtype for both inputs).

    Example:
        >>> affine_offset(torch.tensor([0.0, 2.0]), torch.tensor([5.0, 1.0]), 0.5)
        tensor([0., 2.])
    """
    r_hat = unit(direction)
    return (reference @ r_hat) * r_hat + alpha * direction


def affine_edit_unit(
    x: Float[Tensor, "*batch d_model"], r_hat: Float[Tensor, "d_model"], offset: Float[Tensor, "d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """The affine edit with ``r̂`` and :func:`affine_offset` computed beforehand:
    ``(x − (x·r̂) r̂) + ((μ·r̂) r̂ + α·r)``, which equals ``x − ((x − μ)·r̂) r̂ + α·r``.

    This is what :func:`affine_edit` and the affine-edit hooks run.

    Example:
        >>> r = torch.tensor([0.0, 2.0])
        >>> affine_edit_unit(torch.tensor([[3.0, 7.0]]), unit(r), affine_offset(r, torch.zeros(2), 1.0))
        tensor([[3., 2.]])
    """
    return project_out_unit(x, r_hat) + offset.to(device=x.device, dtype=x.dtype)


def cosine(
    a: Float[Tensor, "*batch d_model"], b: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch"]:
    """Cosine similarity along the last dimension.

    Example:
        >>> round(float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))), 4)
        0.7071
    """
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def diff_in_means(
    positive: Float[Tensor, "n_pos_samples *shape"], negative: Float[Tensor, "n_neg_samples *shape"]
) -> Float[Tensor, "*shape"]:
    """Difference of the sample means, ``mean(positive) − mean(negative)``, in float64.

    Example:
        >>> diff_in_means(torch.tensor([[2.0], [4.0]]), torch.tensor([[1.0]]))
        tensor([2.], dtype=torch.float64)
    """
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise ValueError("difference in means needs at least one sample on each side")
    return positive.double().mean(0) - negative.double().mean(0)


def refusal_log_odds(
    logits: Float[Tensor, "batch d_vocab"], refusal_token_ids: Sequence[int] | Tensor
) -> Float[Tensor, "batch"]:
    """First-token refusal score (Arditi et al.): ``log p(refuse) − log(1 − p(refuse))``.

    ``p(refuse)`` is the total next-token probability of the refusal tokens (``"I"``,
    ``"As"``, … for the family). Positive means the model most likely opens with a
    refusal token. Computed in float64 with log-sum-exp for stability.

    Example:
        >>> logits = torch.log(torch.tensor([[0.75, 0.2, 0.05]]))   # p(token 0) = 0.75
        >>> round(float(refusal_log_odds(logits, [0])[0]), 4)          # log(0.75 / 0.25)
        1.0986
    """
    logprobs = logits.double().log_softmax(dim=-1)
    ids = torch.as_tensor(refusal_token_ids, device=logits.device, dtype=torch.long)
    log_p = logprobs[:, ids].logsumexp(dim=-1)
    # log(1 - p) computed stably; clamp keeps p == 1 finite.
    log_not_p = torch.log(-torch.expm1(log_p).clamp(max=-1e-300))
    return log_p - log_not_p


def kl_divergence(
    logits_p: Float[Tensor, "batch d_vocab"], logits_q: Float[Tensor, "batch d_vocab"]
) -> Float[Tensor, "batch"]:
    """``KL(p ‖ q)`` between next-token distributions, per row, in nats (float64).

    Example:
        >>> logits = torch.randn(2, 10)
        >>> kl_divergence(logits, logits)
        tensor([0., 0.], dtype=torch.float64)
    """
    lp = logits_p.double().log_softmax(-1)
    lq = logits_q.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (95% by default).

    Example:
        >>> lo, hi = wilson_interval(5, 10)
        >>> round(lo, 3), round(hi, 3)
        (0.237, 0.763)
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def random_unit_vectors(
    n: int, d_model: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "n d_model"]:
    """``n`` random unit vectors from a fixed seed (for null distributions and controls).

    Example:
        >>> v = random_unit_vectors(3, 8, seed=0)
        >>> v.shape, torch.allclose(v.norm(dim=-1), torch.ones(3))
        (torch.Size([3, 8]), True)
    """
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, d_model, generator=g, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True)).to(dtype)
