"""ops: the pure tensor maths, tested as properties on seeded random tensors.

Directional ablation removes the component along r̂ and is idempotent; adding with
coefficient 0 is the identity; the affine edit pins the projection where ACE says it
should and leaves the orthogonal complement alone; diff-in-means recovers a planted
direction; the refusal log-odds, the KL divergence and the Wilson interval match direct
float64 computations and known values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from persona_refusal import ops

CASES = [(0, (5, 16)), (1, (2, 3, 64)), (2, (1, 8)), (3, (4, 7, 2, 32)), (4, (64,))]
"""(seed, shape of x): the last dimension is d_model; leading dimensions are batch."""


def _tol(x: Tensor) -> float:
    """Absolute tolerance for float32 results of size ~|x|."""
    return 1e-5 * max(1.0, float(x.abs().max()))


@pytest.mark.parametrize("seed,shape", CASES)
def test_project_out_leaves_no_component_and_is_idempotent(seed, shape, random_tensor):
    x = random_tensor(*shape, seed=seed, scale=5.0)
    r = random_tensor(shape[-1], seed=seed + 100)
    y = ops.project_out(x, r)
    r_hat = ops.unit(r)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(y @ r_hat, torch.zeros(shape[:-1]), atol=_tol(x))
    # The orthogonal complement is untouched: x − y is exactly the removed component.
    assert torch.allclose(x - y, (x @ r_hat).unsqueeze(-1) * r_hat, atol=_tol(x))
    # A second ablation changes nothing; the norm and sign of r do not matter.
    assert torch.allclose(ops.project_out(y, r), y, atol=_tol(x))
    assert torch.allclose(ops.project_out(x, -7.5 * r), y, atol=_tol(x))


@pytest.mark.parametrize("seed,shape", CASES)
def test_add_vector(seed, shape, random_tensor):
    x = random_tensor(*shape, seed=seed)
    v = random_tensor(shape[-1], seed=seed + 1)
    assert torch.equal(ops.add_vector(x, v, 0.0), x)
    assert torch.allclose(ops.add_vector(x, v, 2.5), x + 2.5 * v, atol=1e-6)
    assert torch.allclose(ops.add_vector(ops.add_vector(x, v, 1.5), v, -1.5), x, atol=1e-5)


@pytest.mark.parametrize("seed,shape", CASES)
def test_affine_edit_alpha_zero_pins_projection_to_reference(seed, shape, random_tensor):
    x = random_tensor(*shape, seed=seed, scale=4.0)
    r = random_tensor(shape[-1], seed=seed + 1)
    mu = random_tensor(shape[-1], seed=seed + 2)
    y = ops.affine_edit(x, r, mu, alpha=0.0)
    r_hat = ops.unit(r)
    assert torch.allclose(y @ r_hat, (mu @ r_hat).expand(shape[:-1]), atol=_tol(x))
    # Orthogonal complement unchanged.
    assert torch.allclose(ops.project_out(y, r), ops.project_out(x, r), atol=_tol(x))


@pytest.mark.parametrize("seed,shape", CASES)
@pytest.mark.parametrize("alpha", [1.0, -0.5, 2.0])
def test_affine_edit_with_diff_in_means_moves_projection_alpha_units(seed, shape, alpha, random_tensor):
    d = shape[-1]
    x = random_tensor(*shape, seed=seed, scale=4.0)
    mu_pos = random_tensor(d, seed=seed + 1) + 1.0
    mu_neg = random_tensor(d, seed=seed + 2)
    r = mu_pos - mu_neg
    y = ops.affine_edit(x, r, mu_neg, alpha=alpha)
    r_hat = ops.unit(r)
    target = mu_neg @ r_hat + alpha * (mu_pos - mu_neg) @ r_hat
    assert torch.allclose(y @ r_hat, target.expand(shape[:-1]), atol=_tol(x))
    if alpha == 1.0:  # α = 1 and r = μ₊ − μ₋: the harmful mean's projection
        assert torch.allclose(y @ r_hat, (mu_pos @ r_hat).expand(shape[:-1]), atol=_tol(x))
    assert torch.allclose(ops.project_out(y, r), ops.project_out(x, r), atol=_tol(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("extra_shape", [(), (2, 3)])
def test_diff_in_means_recovers_planted_direction(seed, extra_shape, random_tensor):
    n, d = 4000, 32
    v = random_tensor(*extra_shape, d, seed=seed + 50, scale=0.5)
    positive = random_tensor(n, *extra_shape, d, seed=seed) + v
    negative = random_tensor(n, *extra_shape, d, seed=seed + 1)
    diff = ops.diff_in_means(positive, negative)
    assert diff.shape == (*extra_shape, d) and diff.dtype == torch.float64
    # Each coordinate is v plus noise with std sqrt(2 / n) ≈ 0.022: allow 5 sigma.
    sigma = math.sqrt(2 / n)
    assert float((diff - v.double()).abs().max()) < 5 * sigma
    assert float(ops.cosine(diff, v.double()).min()) > 0.95


def test_diff_in_means_needs_samples_on_both_sides():
    with pytest.raises(ValueError, match="at least one sample"):
        ops.diff_in_means(torch.zeros(0, 4), torch.zeros(3, 4))


def _numpy_log_odds(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    p_refuse = p[:, ids].sum(axis=-1)
    return np.log(p_refuse) - np.log1p(-p_refuse)


@pytest.mark.parametrize("seed,batch,vocab", [(0, 4, 50), (1, 1, 384), (2, 7, 1000)])
def test_refusal_log_odds_matches_float64_numpy(seed, batch, vocab, random_tensor):
    logits = random_tensor(batch, vocab, seed=seed, scale=3.0)
    ids = [0, 5, vocab - 1]
    got = ops.refusal_log_odds(logits, ids)
    assert got.shape == (batch,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _numpy_log_odds(logits.numpy(), ids), rtol=1e-9, atol=1e-9)
    # A tensor of ids gives the same.
    assert torch.equal(ops.refusal_log_odds(logits, torch.tensor(ids)), got)


def test_refusal_log_odds_sign_and_extremes():
    # p(refuse) = 1/2 exactly: score 0; dominant refusal token: positive; tiny: negative.
    logits = torch.tensor([[0.0, 0.0], [5.0, 0.0], [-5.0, 0.0], [1000.0, 0.0], [-1000.0, 0.0]])
    s = ops.refusal_log_odds(logits, [0])
    assert abs(float(s[0])) < 1e-12
    assert float(s[1]) == pytest.approx(5.0, abs=1e-9)  # log-odds of a 2-way softmax is the logit gap
    assert float(s[2]) == pytest.approx(-5.0, abs=1e-9)
    assert torch.isfinite(s).all() and float(s[3]) > 100 and float(s[4]) < -100
    # Monotone in the refusal logit.
    gaps = torch.linspace(-10, 10, 21)
    scores = ops.refusal_log_odds(torch.stack([gaps, torch.zeros(21), torch.zeros(21)], 1), [0])
    assert bool((scores.diff() > 0).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_divergence(seed, random_tensor):
    p = random_tensor(6, 40, seed=seed, scale=2.0)
    q = random_tensor(6, 40, seed=seed + 1, scale=2.0)
    assert float(ops.kl_divergence(p, p).abs().max()) < 1e-12
    # Logits shifted by a constant per row are the same distribution.
    assert float(ops.kl_divergence(p, p + torch.arange(6.0)[:, None]).abs().max()) < 1e-6
    kl = ops.kl_divergence(p, q)
    assert kl.shape == (6,) and bool((kl > 0).all())
    lp = torch.log_softmax(p.double(), -1).numpy()
    lq = torch.log_softmax(q.double(), -1).numpy()
    np.testing.assert_allclose(kl.numpy(), (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-10)
    assert not torch.allclose(kl, ops.kl_divergence(q, p))  # not symmetric


@pytest.mark.parametrize(
    "k,n,expected",
    [(5, 10, (0.2366, 0.7634)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (1, 1, (0.2065, 1.0)),
     (50, 100, (0.4038, 0.5962))],
)
def test_wilson_interval_known_values(k, n, expected):
    lo, hi = ops.wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-4)
    assert hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_edge_cases():
    assert all(math.isnan(v) for v in ops.wilson_interval(0, 0))
    with pytest.raises(ValueError):
        ops.wilson_interval(11, 10)
    with pytest.raises(ValueError):
        ops.wilson_interval(-1, 10)
    lo, hi = ops.wilson_interval(5, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.237, 0.763)
    # Wider at 99%.
    lo99, hi99 = ops.wilson_interval(5, 10, z=2.5758)
    assert lo99 < lo and hi99 > hi


def test_unit(random_tensor):
    v = random_tensor(3, 16, seed=0)
    assert torch.allclose(ops.unit(v).norm(dim=-1), torch.ones(3), atol=1e-6)
    with pytest.raises(ValueError, match="zero-length"):
        ops.unit(torch.zeros(8))
    with pytest.raises(ValueError):
        ops.unit(torch.stack([torch.ones(8), torch.zeros(8)]))  # one zero row is enough


def test_projection_and_cosine(random_tensor):
    x = random_tensor(4, 16, seed=1)
    r = random_tensor(16, seed=2)
    assert torch.allclose(ops.projection(x, r), x @ r / r.norm(), atol=1e-5)
    assert torch.allclose(ops.cosine(r, 2 * r), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(ops.cosine(r, -r), torch.tensor(-1.0), atol=1e-6)


def test_random_unit_vectors_are_seeded_unit_vectors():
    a = ops.random_unit_vectors(5, 32, seed=3)
    assert isinstance(a, Float[Tensor, "5 32"])
    assert torch.equal(a, ops.random_unit_vectors(5, 32, seed=3))
    assert not torch.allclose(a, ops.random_unit_vectors(5, 32, seed=4))
    assert torch.allclose(a.norm(dim=-1), torch.ones(5), atol=1e-6)


def test_runtime_shape_checks_are_live(runtime_typechecks):
    """With the jaxtyping hook (tests/conftest.py), mismatched widths fail at the call."""
    if not runtime_typechecks:
        pytest.skip("runtime shape checks are off")
    from jaxtyping import TypeCheckError

    with pytest.raises(TypeCheckError):
        ops.project_out(torch.randn(3, 8), torch.randn(7))
    with pytest.raises(TypeCheckError):
        ops.cosine(torch.randn(3, 8), torch.randn(3, 7))
    with pytest.raises(TypeCheckError):
        ops.refusal_log_odds(torch.randn(5), [1])


@pytest.mark.parametrize("seed,shape", CASES)
def test_prepared_forms_are_the_formulas_the_hooks_run(seed, shape, random_tensor):
    """``project_out`` and ``affine_edit`` are their prepared forms (r̂ and the offset
    computed once, as the hooks do) to the bit; the affine edit equals ACE's textbook
    form ``x − ((x − μ)·r̂) r̂ + α·r`` up to rounding."""
    x = random_tensor(*shape, seed=seed, scale=3.0)
    r = random_tensor(shape[-1], seed=seed + 1)
    mu = random_tensor(shape[-1], seed=seed + 2)
    r_hat = ops.unit(r)
    assert torch.equal(ops.project_out(x, r), ops.project_out_unit(x, r_hat))
    assert torch.equal(ops.project_out_unit(x, r_hat), x - (x @ r_hat).unsqueeze(-1) * r_hat)
    offset = ops.affine_offset(r, mu, 0.75)
    assert torch.equal(offset, (mu @ r_hat) * r_hat + 0.75 * r)
    assert torch.equal(ops.affine_edit(x, r, mu, 0.75), ops.affine_edit_unit(x, r_hat, offset))
    textbook = x - ((x - mu) @ r_hat).unsqueeze(-1) * r_hat + 0.75 * r
    assert torch.allclose(ops.affine_edit(x, r, mu, 0.75), textbook, atol=_tol(x))
