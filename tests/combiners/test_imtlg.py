"""Tests of the IMTL-G combiner (impartial gradient weighting)."""

from __future__ import annotations

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
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from markers import requires_cuda
from torch import Tensor
from torchjd.aggregation import IMTLGWeighting

from mtrl_fair.combiners import make
from mtrl_fair.combiners.imtlg import IMTLG


def unit_projections(jacobian: Tensor, direction: Tensor) -> Tensor:
    """``dᵀuᵢ`` for every unit gradient ``uᵢ``."""
    return jacobian @ direction / jacobian.norm(dim=1)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_shared_properties_on_degenerate_jacobians(jacobian: Tensor) -> None:
    check_shape_and_finite(IMTLG(), jacobian)
    check_weights_reproduce_direction(IMTLG(), jacobian)
    check_gramian_weights_match_combine(IMTLG(), jacobian)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_permutation_equivariance(num_tasks: int, seed: int) -> None:
    check_permutation_equivariance(IMTLG(), random_jacobian(num_tasks, num_tasks + 8, seed=seed))


@settings(max_examples=40, deadline=None)
@given(jacobians(kinds=("random",)))
def test_equal_positive_projections(jacobian: Tensor) -> None:
    # The defining property: d has the same, positive, projection on every unit gradient, and
    # the weights sum to ±1 (−1 where the paper's normalisation would flip d; see the docstring).
    jacobian = jacobian.double()
    assume(jacobian.shape[1] >= jacobian.shape[0])  # else no impartial direction in general
    weights = IMTLG().weights(jacobian @ jacobian.T)
    projections = unit_projections(jacobian, weights @ jacobian)
    assert projections.min() > 0
    assert projections.max() - projections.min() <= 1e-6 * projections.max()
    assert abs(weights.sum().abs().item() - 1.0) <= 1e-9


def test_zero_gradient_gets_no_weight() -> None:
    jacobian = random_jacobian(4, 10, seed=3, kind="zero_row").double()
    weights = IMTLG().weights(jacobian @ jacobian.T)
    assert weights[0] == 0
    expected = IMTLG().weights(jacobian[1:] @ jacobian[1:].T)
    torch.testing.assert_close(weights[1:], expected, rtol=1e-9, atol=1e-12)


def test_duplicated_gradients_share_the_weight_of_one_copy() -> None:
    # How the two copies split it is arbitrary (the system is singular along that split, and the
    # direction does not depend on it); their total is the weight of a single copy.
    jacobian = random_jacobian(4, 10, seed=6, kind="duplicate_rows").double()
    weights = IMTLG().weights(jacobian @ jacobian.T)
    single = IMTLG().weights(jacobian[1:] @ jacobian[1:].T)
    torch.testing.assert_close(torch.cat([weights[:2].sum().unsqueeze(0), weights[2:]]), single)
    projections = unit_projections(jacobian, weights @ jacobian)
    torch.testing.assert_close(projections, projections.mean().expand(4), rtol=1e-6, atol=0)


def test_opposite_gradients_give_no_update() -> None:
    # No direction projects equally (and non-zero) on g and −g: the impartial direction is zero.
    jacobian = random_jacobian(3, 10, seed=7, kind="opposite").double()
    direction = IMTLG()(jacobian)
    assert direction.norm() <= 1e-6 * jacobian.norm()


def test_impartial_direction_never_increases_every_loss() -> None:
    # Here Σv < 0: the paper's sum-to-one weights (TorchJD's) make d ascend on every task.
    half = 0.5**0.5
    jacobian = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [half * 0.05, half * 0.05, 0.02]], dtype=torch.float64)
    gram = jacobian @ jacobian.T
    theirs = unit_projections(jacobian, IMTLGWeighting()(gram) @ jacobian)
    ours_weights = IMTLG().weights(gram)
    ours = unit_projections(jacobian, ours_weights @ jacobian)
    assert (theirs < 0).all()
    assert (ours > 0).all()
    torch.testing.assert_close(ours, -theirs)
    torch.testing.assert_close(ours_weights.sum(), torch.tensor(-1.0, dtype=torch.float64))


def test_scale_invariance() -> None:
    jacobian = random_jacobian(5, 12, seed=4).double()
    base = IMTLG().weights(jacobian @ jacobian.T)
    for scale in (1e-12, 1e12):
        scaled = jacobian * scale
        torch.testing.assert_close(IMTLG().weights(scaled @ scaled.T), base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_matches_torchjd(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_tasks = 1 + seed
    # A shared component keeps Σv > 0, where the sum-to-one conventions coincide.
    jacobian = torch.randn(num_tasks, num_tasks + 10, generator=generator, dtype=torch.float64)
    jacobian = jacobian + torch.randn(1, num_tasks + 10, generator=generator, dtype=torch.float64)
    gram = jacobian @ jacobian.T
    theirs = IMTLGWeighting()(gram)
    assert theirs.sum() > 0
    # Same closed form (pinv vs a ridge of ~1e-14 on the cosine matrix): measured ≤ 2e-13.
    torch.testing.assert_close(IMTLG().weights(gram), theirs, rtol=1e-9, atol=1e-12)


def test_takes_no_hyperparameters() -> None:
    with pytest.raises(ValueError, match="hyperparameter"):
        make("imtlg", c=1.0)


def test_repr() -> None:
    assert repr(make("imtlg")) == "IMTLG()"


@requires_cuda
def test_weights_do_not_synchronise_on_cuda() -> None:
    check_weights_sync_free_on_cuda(IMTLG(), kind="duplicate_rows", rtol=1e-4)


@requires_cuda
def test_weights_capture_in_a_cuda_graph() -> None:
    check_weights_capture_in_cuda_graph(IMTLG(), rtol=1e-4)
