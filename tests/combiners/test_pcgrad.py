"""Tests of the PCGrad combiner (projecting conflicting gradients)."""

from __future__ import annotations

import io
import itertools
from unittest import mock

import pytest
import torch
from combiner_checks import (
    check_gramian_weights_match_combine,
    check_permutation_equivariance,
    check_shape_and_finite,
    check_weights_capture_in_cuda_graph,
    check_weights_reproduce_direction,
    jacobians,
    no_host_sync,
    random_jacobian,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from markers import requires_cuda
from torch import Tensor
from torchjd.aggregation import PCGradWeighting

from mtrl_fair.combiners import make
from mtrl_fair.combiners.pcgrad import PCGrad, pcgrad_weights


def expected_weights(gram: Tensor) -> Tensor:
    """The exact expectation of PCGrad's weights over uniformly random orders.

    Task ``i``'s projected gradient depends only on its own order, and the orders are independent
    and uniform, so the expectation is the average over the ``K!`` orders used for every task.
    """
    num_tasks = gram.shape[0]
    orders = [torch.tensor(order).expand(num_tasks, -1) for order in itertools.permutations(range(num_tasks))]
    return torch.stack([pcgrad_weights(gram, order) for order in orders]).mean(dim=0)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_shared_properties_on_degenerate_jacobians(jacobian: Tensor) -> None:
    check_shape_and_finite(PCGrad(), jacobian)
    # Each check reseeds: combine() and weights() must see the same orders to agree.
    check_weights_reproduce_direction(PCGrad(), jacobian)
    combiner = PCGrad()
    with mock.patch.object(combiner, "draw_orders", side_effect=_fixed_orders):
        check_gramian_weights_match_combine(combiner, jacobian)


def _fixed_orders(num_tasks: int, device: torch.device | str) -> Tensor:
    return torch.arange(num_tasks, device=device).flip(0).expand(num_tasks, -1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_permutation_equivariance_with_two_tasks(num_tasks: int, seed: int) -> None:
    # With at most two tasks there is only one order, so PCGrad is deterministic and equivariant.
    check_permutation_equivariance(PCGrad(), random_jacobian(num_tasks, 5, seed=seed))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_expected_weights_are_permutation_equivariant(seed: int) -> None:
    # With three or more tasks a single call depends on the random orders, but its expectation
    # (computed exactly by enumerating the orders) must permute with the tasks. Three tasks keep
    # the enumeration cheap; test_orders_are_uniform covers four.
    num_tasks = 3
    jacobian = random_jacobian(num_tasks, 6, seed=seed).double()
    permutation = torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed))
    base = expected_weights(jacobian @ jacobian.T)
    permuted = expected_weights(jacobian[permutation] @ jacobian[permutation].T)
    torch.testing.assert_close(permuted, base[permutation], rtol=1e-9, atol=1e-12)


def test_orders_are_uniform() -> None:
    # The Monte-Carlo average of the combiner's weights converges to the exact expectation.
    jacobian = random_jacobian(4, 6, seed=11).double()
    gram = jacobian @ jacobian.T
    combiner = PCGrad(seed=3)
    samples = torch.stack([combiner.weights(gram) for _ in range(600)])
    standard_error = samples.std(dim=0) / 600**0.5
    assert ((samples.mean(dim=0) - expected_weights(gram)).abs() <= 5 * standard_error + 1e-12).all()


def test_fixed_seed_reproduces_and_reset_restarts() -> None:
    jacobian = random_jacobian(5, 8, seed=2).double()
    gram = jacobian @ jacobian.T
    first, second = PCGrad(seed=7), PCGrad(seed=7)
    run = [first.weights(gram) for _ in range(5)]
    for expected in run:
        torch.testing.assert_close(second.weights(gram), expected, rtol=0, atol=0)
    first.reset()
    torch.testing.assert_close(first.weights(gram), run[0], rtol=0, atol=0)
    orders = {tuple(PCGrad(seed=seed).draw_orders(5, "cpu").flatten().tolist()) for seed in range(5)}
    assert len(orders) > 1


def test_state_dict_round_trip_continues_the_stream() -> None:
    jacobian = random_jacobian(5, 8, seed=4).double()
    gram = jacobian @ jacobian.T
    combiner = PCGrad(seed=1)
    combiner.weights(gram)
    buffer = io.BytesIO()
    torch.save(combiner.state_dict(), buffer)
    expected = [combiner.weights(gram) for _ in range(3)]
    restored = PCGrad(seed=1)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for weights in expected:
        torch.testing.assert_close(restored.weights(gram), weights, rtol=0, atol=0)
    with pytest.raises(ValueError, match="keys"):
        restored.load_state_dict({"unexpected": 1})


def test_no_conflict_is_the_mean() -> None:
    jacobian = random_jacobian(6, 10, seed=5).abs().double()  # all pairwise inner products > 0
    torch.testing.assert_close(
        PCGrad().weights(jacobian @ jacobian.T), torch.full((6,), 1 / 6, dtype=torch.float64)
    )


def test_two_conflicting_tasks_closed_form() -> None:
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    jacobian = torch.stack([g1, g2])
    projected_1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    projected_2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(PCGrad()(jacobian), (projected_1 + projected_2) / 2)


@pytest.mark.parametrize("seed", range(8))
def test_matches_torchjd(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_tasks = 2 + seed
    jacobian = torch.randn(num_tasks, 12, generator=generator, dtype=torch.float64)
    gram = jacobian @ jacobian.T
    combiner = PCGrad(seed=seed)
    orders = combiner.draw_orders(num_tasks, "cpu")
    combiner.reset()
    ours = combiner.weights(gram)
    # TorchJD draws one torch.randperm per task, in task order: feed it ours.
    rows = iter(orders)
    with mock.patch("torch.randperm", side_effect=lambda *args, **kwargs: next(rows)):
        theirs = PCGradWeighting()(gram)
    # TorchJD sums the projected gradients like the paper; we average them (measured ~2e-16).
    torch.testing.assert_close(ours * num_tasks, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [-1, 1.5, "0", None])
def test_bad_seed(value: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        make("pcgrad", seed=value)


def test_repr_shows_hyperparameters() -> None:
    assert repr(make("pcgrad", seed=3)) == "PCGrad(seed=3)"


@requires_cuda
def test_weights_do_not_synchronise_on_cuda() -> None:
    jacobian = random_jacobian(6, 40, seed=0, kind="zero_row").cuda()
    gram = jacobian @ jacobian.T
    combiner = PCGrad()
    combiner.weights(gram)  # warm-up: CUDA context, generator on the device
    with no_host_sync():
        weights = combiner.weights(gram)
    assert weights.device == gram.device
    assert torch.isfinite(weights).all()


@requires_cuda
def test_weights_capture_in_a_cuda_graph() -> None:
    combiner = PCGrad()
    # Two tasks in conflict and three orthogonal ones: every order gives the same result, so the
    # replays (each with fresh random orders) must all agree with the CPU.
    fresh = torch.eye(5, 7)
    fresh[1, 0] = -1.0
    check_weights_capture_in_cuda_graph(
        combiner,
        rtol=1.3e-6,
        atol=1e-5,
        static=torch.eye(5),
        fresh=fresh,
        generators=[combiner.generator("cuda")],
        replays=3,
    )
