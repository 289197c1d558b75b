"""Tests of the MGDA combiner (minimum-norm element of the convex hull of the gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_checks import (
    check_gramian_weights_match_combine,
    check_permutation_equivariance,
    check_shape_and_finite,
    check_weights_capture_in_cuda_graph,
    check_weights_reproduce_direction,
    check_weights_sync_free_on_cuda,
    jacobians,
    random_jacobian,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from markers import requires_cuda
from torch import Tensor
from torchjd.aggregation import MGDAWeighting

from mtrl_fair.combiners import make
from mtrl_fair.combiners.mgda import MGDA


def assert_min_norm_kkt(weights: Tensor, gram: Tensor, tol: float) -> None:
    """KKT conditions of ``min wᵀAw`` on the simplex, with ``tol`` relative to the mean diagonal.

    ``w`` is on the simplex, ``(A w)_i >= wᵀAw`` for every task, with equality on the support.
    """
    weights, gram = weights.double(), gram.double()
    scale = gram.diagonal().mean().item() or 1.0
    grad = gram @ weights
    value = weights @ grad
    assert weights.min() >= -tol
    assert abs(weights.sum().item() - 1.0) <= tol
    assert (grad - value).min() >= -tol * scale
    on_support = weights > tol
    assert ((grad - value).abs() * on_support).max() <= tol * scale


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_shared_properties_on_degenerate_jacobians(jacobian: Tensor) -> None:
    direction = check_shape_and_finite(MGDA(), jacobian)
    check_weights_reproduce_direction(MGDA(), jacobian)
    check_gramian_weights_match_combine(MGDA(), jacobian)
    # The min-norm element never conflicts with a task: gᵢᵀd >= ‖d‖² >= 0 (float32 slack).
    inner = jacobian.double() @ direction.double()
    assert inner.min() >= -1e-4 * jacobian.double().norm(dim=1).max() ** 2


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_kkt_conditions(jacobian: Tensor) -> None:
    gram64 = jacobian.double() @ jacobian.double().T
    # A float64 Gram matrix is solved to a few ulps.
    assert_min_norm_kkt(MGDA().weights(gram64), gram64, tol=1e-9)
    # A float32 one only to its own precision (it is not even exactly PSD); measured worst ~6e-6.
    assert_min_norm_kkt(MGDA().weights(jacobian @ jacobian.T), gram64, tol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_permutation_equivariance(num_tasks: int, seed: int) -> None:
    # Full-row-rank Jacobians (P > K): the minimiser is unique, so the weights must permute.
    check_permutation_equivariance(MGDA(), random_jacobian(num_tasks, num_tasks + 8, seed=seed))


def test_known_two_task_solution() -> None:
    # g₁ = (1, 0), g₂ = (0, 2): minimising w₁² + 4w₂² on the simplex gives w = (0.8, 0.2).
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        MGDA().weights(jacobian @ jacobian.T), torch.tensor([0.8, 0.2], dtype=torch.float64)
    )


def test_vertex_solution_when_one_gradient_is_dominated() -> None:
    # g₁ = (1, 0), g₂ = (3, 1): g₁ᵀg₂ >= ‖g₁‖², so the vertex g₁ is the min-norm point.
    jacobian = torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        MGDA().weights(jacobian @ jacobian.T), torch.tensor([1.0, 0.0], dtype=torch.float64)
    )


def test_zero_gradient_gets_all_the_weight() -> None:
    jacobian = random_jacobian(4, 10, seed=3, kind="zero_row").double()
    weights = MGDA().weights(jacobian @ jacobian.T)
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_scale_invariance() -> None:
    jacobian = random_jacobian(5, 12, seed=4).double()
    base = MGDA().weights(jacobian @ jacobian.T)
    for scale in (1e-12, 1e12):
        scaled = jacobian * scale
        torch.testing.assert_close(MGDA().weights(scaled @ scaled.T), base, rtol=1e-9, atol=1e-12)


def test_single_iteration_stays_on_the_simplex() -> None:
    jacobian = random_jacobian(6, 20, seed=5).double()
    weights = MGDA(max_iters=1).weights(jacobian @ jacobian.T)
    assert weights.min() >= 0.0
    assert abs(weights.sum().item() - 1.0) < 1e-12


def _exact_min_norm(gram: Tensor) -> Tensor:
    """Reference from quadprog, an exact dual active-set QP solver (via TorchJD's qpsolvers dependency)."""
    from qpsolvers import solve_qp  # imported here: only this reference needs it

    num_tasks = gram.shape[0]
    weights = solve_qp(
        gram.numpy() + 1e-13 * np.eye(num_tasks),
        np.zeros(num_tasks),
        G=-np.eye(num_tasks),
        h=np.zeros(num_tasks),
        A=np.ones((1, num_tasks)),
        b=np.ones(1),
        solver="quadprog",
    )
    return torch.from_numpy(weights)


@pytest.mark.parametrize("seed", range(6))
def test_matches_torchjd_and_exact_qp(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_tasks = 2 + seed
    jacobian = torch.randn(num_tasks, num_tasks + 10, generator=generator, dtype=torch.float64)
    gram = jacobian @ jacobian.T
    ours = MGDA().weights(gram)
    # TorchJD runs Sener & Koltun's Frank-Wolfe solver to a 1e-3 step tolerance: with two tasks its
    # exact line search lands on the optimum (measured agreement ~1e-16); with more it stops early
    # (directions differ by up to ~0.2 at its defaults), so there we only check that our
    # objective is never worse than TorchJD's.
    theirs = MGDAWeighting()(gram)
    if num_tasks == 2:
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert ours @ gram @ ours <= theirs @ gram @ theirs + 1e-12 * gram.diagonal().mean()
    # Against an exact QP solver the directions agree to ~1e-12 (both are exact); allow 1e-8.
    exact = _exact_min_norm(gram)
    assert (ours - exact) @ jacobian @ jacobian.T @ (ours - exact) <= (1e-8) ** 2 * gram.diagonal().mean()


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_bad_max_iters(value: object) -> None:
    with pytest.raises(ValueError, match="max_iters"):
        make("mgda", max_iters=value)


def test_repr_shows_hyperparameters() -> None:
    assert repr(make("mgda", max_iters=12)) == "MGDA(max_iters=12)"
    assert repr(make("mgda")) == "MGDA(max_iters=None)"


@requires_cuda
def test_weights_do_not_synchronise_on_cuda() -> None:
    check_weights_sync_free_on_cuda(MGDA(), kind="zero_row", rtol=1e-5)


@requires_cuda
def test_weights_capture_in_a_cuda_graph() -> None:
    check_weights_capture_in_cuda_graph(MGDA(), rtol=1e-5)
