"""Nash-MTL: the exact bargaining system, agreement with TorchJD's CCP solver, clipping, GPU sync."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from combiner_checks import (
    check_gramian_weights_match_combine,
    check_permutation_equivariance,
    check_shape_and_finite,
    check_weights_reproduce_direction,
    jacobians,
    no_host_sync,
    random_jacobian,
)
from hypothesis import given, settings
from markers import requires_cuda
from torch import Tensor
from torchjd.aggregation import NashMTL as TorchJDNashMTL

from mtrl_fair.combiners import make
from mtrl_fair.combiners.fairgrad import FairGrad, fairgrad_residual
from mtrl_fair.combiners.nashmtl import NashMTL

# TorchJD (like the official code) stops its convex-concave iterations once the residual of the
# Frobenius-normalised system is below 1e-3, and ECOS itself solves to ~1e-8. Measured: its
# weights differ from the exact solution by at most ~2e-7 relative (random 2..6 tasks, 20 params,
# gradient scales 0.1..10); 1e-5 leaves room for other platforms.
TORCHJD_RTOL = 1e-5
# The ridge (1e-10 of the mean squared gradient norm) bounds the exact system's residual.
RESIDUAL_TOL = 1e-8


def _torchjd_weights(jacobian: Tensor, max_norm: float) -> Tensor:
    aggregator = TorchJDNashMTL(n_tasks=jacobian.shape[0], max_norm=max_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy: "problem is not DPP"
        return aggregator.weighting(jacobian)


def _well_conditioned(seed: int, scale: float) -> Tensor:
    num_tasks = 2 + seed % 5
    return random_jacobian(num_tasks, 20, seed=seed).double() * scale


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_torchjd_unclipped(seed: int, scale: float) -> None:
    jacobian = _well_conditioned(seed, scale)
    ours = NashMTL(max_norm=0.0).weights(jacobian @ jacobian.T)
    reference = _torchjd_weights(jacobian, max_norm=0.0)
    assert (ours - reference).abs().max() <= TORCHJD_RTOL * ours.abs().max()


@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd_clipped(seed: int) -> None:
    jacobian = _well_conditioned(seed, 1.0)
    combination = NashMTL().combine(jacobian)
    reference = _torchjd_weights(jacobian, max_norm=1.0)
    assert (combination.weights - reference).abs().max() <= TORCHJD_RTOL * reference.abs().max()
    assert math.isclose(float(combination.direction.norm()), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["random", "duplicate_rows", "collinear"])
@pytest.mark.parametrize("num_tasks", [1, 2, 5, 10])
def test_exact_system_and_norm(kind: str, num_tasks: int) -> None:
    jacobian = random_jacobian(num_tasks, 30, seed=num_tasks, kind=kind).double()
    gram = jacobian @ jacobian.T
    weights = NashMTL(max_norm=0.0).weights(gram)
    assert (weights > 0).all()
    assert float(fairgrad_residual(gram, weights, 1.0)) <= RESIDUAL_TOL
    # ‖Jᵀw‖² = wᵀGw = Σ wᵢ · (1/wᵢ) = K at the solution.
    assert math.isclose(float((weights @ jacobian).norm()), math.sqrt(num_tasks), rel_tol=1e-8)
    # Clipping is then a constant rescale to min(√K, max_norm).
    clipped = NashMTL(max_norm=2.0).combine(jacobian)
    assert math.isclose(float(clipped.direction.norm()), min(math.sqrt(num_tasks), 2.0), rel_tol=1e-8)


def test_equals_fairgrad_alpha_one_without_clipping() -> None:
    jacobian = random_jacobian(6, 15, seed=3).double()
    gram = jacobian @ jacobian.T
    assert torch.allclose(NashMTL(max_norm=0.0).weights(gram), FairGrad(alpha=1.0).weights(gram), rtol=1e-12)


def test_direction_is_scale_invariant() -> None:
    jacobian = random_jacobian(4, 9, seed=5).double()
    base = NashMTL(max_norm=0.0)(jacobian)
    for scale in (1e-6, 1e-3, 1e3, 1e6):
        assert torch.allclose(NashMTL(max_norm=0.0)(jacobian * scale), base, rtol=1e-8)


def test_conflicting_gradients_get_balanced_rates() -> None:
    # Nash bargaining: every task's rate gᵢᵀd equals 1/wᵢ, so no task is sacrificed.
    jacobian = torch.tensor([[10.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    combination = NashMTL(max_norm=0.0).combine(jacobian)
    rates = jacobian @ combination.direction
    assert (rates > 0).all()
    assert torch.allclose(rates * combination.weights, torch.ones(2, dtype=torch.float64), rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_finite_on_degenerate_inputs(jacobian: Tensor) -> None:
    check_shape_and_finite(NashMTL(), jacobian)
    check_shape_and_finite(NashMTL(max_norm=0.0), jacobian)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_weights_reproduce_direction(jacobian: Tensor) -> None:
    check_weights_reproduce_direction(NashMTL(), jacobian)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_gramian_weights_match_combine(jacobian: Tensor) -> None:
    check_gramian_weights_match_combine(NashMTL(), jacobian)


@settings(max_examples=40, deadline=None)
@given(jacobians(kinds=("random", "zero_row", "duplicate_rows", "collinear")))
def test_permutation_equivariance(jacobian: Tensor) -> None:
    check_permutation_equivariance(NashMTL(), jacobian)


def test_hparams_and_registry() -> None:
    combiner = make("nashmtl", max_norm=0.0, max_iter=30)
    assert isinstance(combiner, NashMTL)
    assert combiner.hparams() == {"max_norm": 0.0, "max_iter": 30, "ridge": 1e-10}
    assert repr(NashMTL()) == "NashMTL(max_norm=1.0, max_iter=50, ridge=1e-10)"
    with pytest.raises(ValueError, match="update_weights_every"):
        make("nashmtl", update_weights_every=2)


@pytest.mark.parametrize(
    "hparams",
    [
        {"max_norm": -1.0},
        {"max_norm": float("inf")},
        {"max_iter": 0},
        {"max_iter": 1.5},
        {"ridge": -1e-3},
        {"ridge": 2.0},
        {"ridge": "none"},
    ],
)
def test_bad_hyperparameters(hparams: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - check_number's message is tested with base
        NashMTL(**hparams)  # type: ignore[arg-type]


@requires_cuda
def test_gpu_no_host_sync() -> None:
    jacobian = random_jacobian(10, 1000, seed=0).cuda()
    combiner = NashMTL()
    reference = combiner.combine(jacobian.cpu())
    combiner.combine(jacobian)  # warm-up: lazy CUDA initialisation (and kernel compilation) may sync
    with no_host_sync():
        combination = combiner.combine(jacobian)
        weights = combiner.weights(jacobian @ jacobian.T)
    assert torch.allclose(combination.weights.cpu(), reference.weights, rtol=1e-4)
    assert torch.allclose(weights.cpu(), reference.weights, rtol=1e-4)


def test_permutation_equivariance_when_large_weights_cancel() -> None:
    """Collinear gradients of opposite signs: no positive solution, ridge-bounded weights ~1e6
    whose terms cancel to a tiny direction (a case CI's hypothesis run found)."""
    jacobian = torch.tensor(
        [[0.0661], [0.0267], [0.0062], [0.0621], [-0.0452], [-0.0166], [-0.1523], [0.0382]]
    )
    check_permutation_equivariance(NashMTL(), jacobian)
