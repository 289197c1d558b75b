"""UPGrad: agreement with TorchJD's quadprog-based UPGrad, properties, degenerate inputs, GPU sync."""

from __future__ import annotations

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
from torchjd._linalg import QuadprogProjector
from torchjd.aggregation import UPGrad as TorchJDUPGrad
from torchjd.aggregation import UPGradWeighting

from mtrl_fair.combiners import make
from mtrl_fair.combiners.upgrad import UPGrad

# Measured: the batched interior point + active-set polish matches quadprog to ~4e-13 (relative to
# the largest weight) on 400 random and degenerate Gram matrices with K <= 100; 1e-9 leaves room
# for the conditioning (reg_eps = 1e-4 bounds it by ~1e4) of other platforms' BLAS.
TORCHJD_RTOL = 1e-9

KINDS = ("random", "zero_row", "duplicate_rows", "collinear", "opposite")


def _cases() -> list[torch.Tensor]:
    cases = []
    for seed in range(5):
        for kind in KINDS:
            num_tasks = 2 + seed % 7
            num_params = (3, 5, 40)[seed % 3]  # fewer, about as many, and more params than tasks
            jacobian = random_jacobian(num_tasks, num_params, seed=seed, kind=kind).double()
            cases.append(jacobian * torch.rand(num_tasks, 1, generator=torch.Generator().manual_seed(seed)))
    return cases


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("jacobian", _cases())
def test_matches_torchjd(jacobian: torch.Tensor) -> None:
    gram = jacobian @ jacobian.T
    assert _relative_error(UPGrad().weights(gram), UPGradWeighting()(gram)) <= TORCHJD_RTOL
    direction = UPGrad()(jacobian)
    reference = TorchJDUPGrad()(jacobian)
    assert (direction - reference).norm() <= TORCHJD_RTOL * reference.norm() * jacobian.shape[0]


def test_matches_torchjd_large_and_rank_deficient() -> None:
    generator = torch.Generator().manual_seed(7)
    for num_tasks, num_params in ((40, 3), (30, 300)):
        jacobian = torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)
        jacobian = jacobian * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) ** 3
        gram = jacobian @ jacobian.T
        assert _relative_error(UPGrad().weights(gram), UPGradWeighting()(gram)) <= TORCHJD_RTOL


def test_matches_torchjd_with_preference_and_epsilons() -> None:
    jacobian = random_jacobian(4, 6, seed=3).double()
    gram = jacobian @ jacobian.T
    pref = (0.1, 2.0, 0.0, 1.0)
    reference = UPGradWeighting(
        torch.tensor(pref, dtype=torch.float64), projector=QuadprogProjector(norm_eps=1e-3, reg_eps=1e-2)
    )(gram)
    ours = UPGrad(pref_vector=pref, norm_eps=1e-3, reg_eps=1e-2).weights(gram)
    assert _relative_error(ours, reference) <= TORCHJD_RTOL


def test_small_jacobian_gets_mean_weights_like_torchjd() -> None:
    # TorchJD's absolute threshold: a squared Frobenius norm below norm_eps means "zero".
    jacobian = random_jacobian(3, 4, seed=1).double() * 1e-4
    gram = jacobian @ jacobian.T
    assert torch.allclose(UPGrad().weights(gram), torch.full((3,), 1.0 / 3, dtype=torch.float64))
    assert torch.allclose(UPGrad().weights(gram), UPGradWeighting()(gram))
    # norm_eps=0 turns it off: the weights are then scale-invariant.
    unscaled = jacobian * 1e4
    assert torch.allclose(UPGrad(norm_eps=0).weights(gram), UPGrad().weights(unscaled @ unscaled.T))


@pytest.mark.parametrize("kind", KINDS)
def test_no_conflict_and_weights_at_least_mean(kind: str) -> None:
    jacobian = random_jacobian(6, 10, seed=11, kind=kind).double()
    gram = jacobian @ jacobian.T
    combiner = UPGrad()
    weights = combiner.weights(gram)
    assert (weights >= 1.0 / 6 - 1e-12).all()
    # Each task's rate gⱼᵀd is non-negative, up to the reg_eps ridge: gⱼᵀd >= -reg_eps·tr(G)·wⱼ.
    rates = gram @ weights
    assert (rates >= -combiner.reg_eps * gram.trace() * weights - 1e-12).all()


def test_single_task_and_all_zero() -> None:
    jacobian = torch.tensor([[3.0, -4.0]])
    combination = UPGrad().combine(jacobian)
    assert torch.allclose(combination.weights, torch.ones(1))
    assert torch.allclose(combination.direction, jacobian[0])
    zero = torch.zeros(4, 5)
    combination = UPGrad().combine(zero)
    assert torch.allclose(combination.weights, torch.full((4,), 0.25))
    assert torch.equal(combination.direction, torch.zeros(5))
    assert torch.isfinite(UPGrad(norm_eps=0.0).weights(torch.zeros(3, 3))).all()


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_finite_on_degenerate_inputs(jacobian: torch.Tensor) -> None:
    check_shape_and_finite(UPGrad(), jacobian)


@pytest.mark.parametrize("kind", KINDS)
def test_finite_with_minimal_regularisation(kind: str) -> None:
    # A float32 Gram matrix of rank-deficient rows is slightly indefinite: with reg_eps = 1e-12 the
    # solver must add the extra ridge that makes it factorisable rather than return NaN.
    combiner = UPGrad(norm_eps=0.0, reg_eps=1e-12)
    check_shape_and_finite(combiner, torch.tensor([[1.5410], [-0.2934]]))
    for scale in (1e-12, 1.0, 1e12):
        check_shape_and_finite(combiner, random_jacobian(6, 3, seed=4, kind=kind) * scale)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_weights_reproduce_direction(jacobian: torch.Tensor) -> None:
    check_weights_reproduce_direction(UPGrad(), jacobian)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_gramian_weights_match_combine(jacobian: torch.Tensor) -> None:
    check_gramian_weights_match_combine(UPGrad(), jacobian)


@settings(max_examples=40, deadline=None)
@given(jacobians(kinds=("random", "zero_row", "duplicate_rows", "opposite")))
def test_permutation_equivariance(jacobian: torch.Tensor) -> None:
    check_permutation_equivariance(UPGrad(), jacobian)


def test_hparams_and_registry() -> None:
    combiner = make("upgrad", num_iter=25, reg_eps=1e-3, pref_vector=[1, 2])
    assert isinstance(combiner, UPGrad)
    assert combiner.hparams() == {
        "pref_vector": (1.0, 2.0),
        "norm_eps": 1e-4,
        "reg_eps": 1e-3,
        "num_iter": 25,
    }
    assert "UPGrad(" in repr(combiner)
    assert UPGrad().hparams() == {"pref_vector": None, "norm_eps": 1e-4, "reg_eps": 1e-4, "num_iter": 20}


@pytest.mark.parametrize(
    "hparams",
    [
        {"norm_eps": -1.0},
        {"reg_eps": 0.0},
        {"reg_eps": "small"},
        {"num_iter": 0},
        {"num_iter": 2.5},
        {"pref_vector": "abc"},
        {"pref_vector": []},
        {"pref_vector": [1.0, float("inf")]},
        {"pref_vector": [1.0, float("nan")]},
    ],
)
def test_bad_hyperparameters(hparams: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked elsewhere
        UPGrad(**hparams)  # type: ignore[arg-type]


def test_preference_length_must_match() -> None:
    with pytest.raises(ValueError, match="pref_vector has 2 entries"):
        UPGrad(pref_vector=[1.0, 1.0]).weights(torch.eye(3))


@requires_cuda
def test_gpu_no_host_sync() -> None:
    jacobian = random_jacobian(10, 1000, seed=0).cuda()
    for combiner in (UPGrad(), UPGrad(pref_vector=[float(i) for i in range(10)])):
        reference = combiner.combine(jacobian.cpu())
        combiner.combine(jacobian)  # warm-up: lazy CUDA/cuSOLVER set-up, preference copied once
        with no_host_sync():
            combination = combiner.combine(jacobian)
            weights = combiner.weights(jacobian @ jacobian.T)
        assert torch.allclose(combination.weights.cpu(), reference.weights, rtol=1e-4, atol=1e-6)
        assert torch.allclose(weights.cpu(), reference.weights, rtol=1e-4, atol=1e-6)
