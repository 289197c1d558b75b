import math

import numpy as np
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
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from markers import requires_cuda
from torchjd.aggregation import FairGradWeighting

from mtrl_fair.combiners import make
from mtrl_fair.combiners.fairgrad import (
    FairGrad,
    fairgrad_residual,
    fairgrad_weights,
    fairgrad_weights_least_squares,
    fairgrad_weights_sgd,
)

ALPHAS = (0.5, 1.0, 2.0, 5.0)


def well_conditioned_gram(num_tasks: int, seed: int) -> torch.Tensor:
    """Correlated task gradients, as in multi-task RL, with a moderate condition number."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, 64, generator=generator, dtype=torch.float64)
    jacobian = torch.randn(num_tasks, 64, generator=generator, dtype=torch.float64) + 0.5 * shared
    jacobian *= torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) + 0.5
    return jacobian @ jacobian.T


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("num_tasks", [2, 5, 10, 50])
def test_newton_matches_least_squares_and_solves_the_system(alpha: float, num_tasks: int) -> None:
    for seed in range(3):
        gram = well_conditioned_gram(num_tasks, seed)
        ours = fairgrad_weights(gram, alpha)
        reference = fairgrad_weights_least_squares(gram, alpha)
        assert (ours > 0).all()
        assert torch.allclose(ours, reference, rtol=1e-4, atol=0.0)
        assert fairgrad_residual(gram, ours, alpha) <= 1e-6


@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_torchjd(alpha: float) -> None:
    gram = well_conditioned_gram(8, seed=11)
    ours = make("fairgrad", alpha=alpha).weights(gram)
    theirs = FairGradWeighting(alpha=alpha)(gram)
    assert torch.allclose(ours, theirs, rtol=1e-4)


def test_alpha_zero_is_mean() -> None:
    jacobian = random_jacobian(4, 9, seed=3)
    assert torch.allclose(make("fairgrad", alpha=0.0)(jacobian), make("mean")(jacobian))


def test_alpha_one_gives_the_nash_bargaining_solution() -> None:
    # Proportional fairness: every task's rate gᵢᵀd times its weight is 1.
    jacobian = random_jacobian(5, 30, seed=4).double()
    combination = make("fairgrad", alpha=1.0).combine(jacobian)
    rates = jacobian @ combination.direction
    assert torch.allclose(rates * combination.weights, torch.ones(5, dtype=torch.float64), atol=1e-8)


def test_large_alpha_approaches_max_min_fairness() -> None:
    # As α grows, the rates gᵢᵀd become equal across tasks.
    jacobian = random_jacobian(4, 40, seed=5).double() + 0.5
    spreads = []
    for alpha in (1.0, 10.0, 100.0):
        rates = jacobian @ make("fairgrad", alpha=alpha)(jacobian)
        spreads.append(((rates.max() - rates.min()) / rates.mean()).item())
    assert spreads[0] > spreads[1] > spreads[2]
    assert spreads[2] < 0.05


def test_scale_convention() -> None:
    # Scaling every gradient by c scales the direction by c^((1-α)/(1+α)).
    jacobian = random_jacobian(3, 10, seed=6).double()
    alpha, factor = 2.0, 7.0
    base = make("fairgrad", alpha=alpha)(jacobian)
    scaled = make("fairgrad", alpha=alpha)(factor * jacobian)
    assert torch.allclose(scaled, base * factor ** ((1 - alpha) / (1 + alpha)), rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobian=jacobians(), alpha=st.sampled_from((0.0, *ALPHAS, 50.0)))
def test_finite_on_degenerate_inputs(jacobian: torch.Tensor, alpha: float) -> None:
    combiner = make("fairgrad", alpha=alpha)
    check_shape_and_finite(combiner, jacobian)
    weights = combiner.weights(jacobian.double() @ jacobian.double().T)
    assert (weights > 0).all()


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(min_tasks=2, kinds=("random", "zero_row", "duplicate_rows", "collinear")))
def test_weights_and_permutation(jacobian: torch.Tensor) -> None:
    # With fewer parameters than tasks the system may have no positive solution (the ridge then
    # sets huge, cancelling weights), so equivariance is checked where the problem is well posed.
    assume(jacobian.shape[1] >= jacobian.shape[0])
    combiner = make("fairgrad", alpha=2.0)
    check_weights_reproduce_direction(combiner, jacobian)
    check_gramian_weights_match_combine(combiner, jacobian)
    check_permutation_equivariance(combiner, jacobian, rtol=1e-6)


def test_weights_stay_bounded_when_a_gradient_vanishes() -> None:
    jacobian = random_jacobian(4, 20, seed=7, kind="zero_row").double()
    combiner = FairGrad(alpha=2.0)
    weights = combiner.weights(jacobian @ jacobian.T)
    scale = torch.diagonal(jacobian @ jacobian.T).mean()
    bound = (combiner.ridge * scale) ** (-combiner.alpha / (1 + combiner.alpha))
    assert weights[0] <= bound * 1.01
    # The other tasks solve the system restricted to them.
    rest = jacobian[1:]
    assert torch.allclose(weights[1:], fairgrad_weights(rest @ rest.T, 2.0), rtol=1e-6)


def _paper_rl_solver(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """The published RL solver, written with torch.optim as the original is."""
    w = torch.full((gram.shape[0],), 1.0 / gram.shape[0], requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.5)
    best, best_objective = None, math.inf
    for _ in range(20):
        optimizer.zero_grad()
        objective = torch.linalg.norm(gram @ w - torch.pow(1 / (w + 1e-8), 1 / alpha)) ** 2
        if objective.item() < best_objective:
            best_objective, best = objective.item(), w.detach().clone()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(w, max_norm=1.0)
        optimizer.step()
        w.data.clamp_(min=1e-8)
    return best


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_sgd_solver_reproduces_the_paper_rl_code(alpha: float) -> None:
    gram = well_conditioned_gram(10, seed=8).float() * 3.0
    assert torch.allclose(
        fairgrad_weights_sgd(gram, alpha), _paper_rl_solver(gram, alpha), rtol=1e-5, atol=1e-7
    )
    # ... and that it does not solve the system, unlike the default solver.
    assert fairgrad_residual(gram, fairgrad_weights_sgd(gram, alpha), alpha) > 1e-2
    assert make("fairgrad", alpha=alpha, solver="sgd").weights(gram).shape == (10,)


def test_least_squares_solver_option() -> None:
    gram = well_conditioned_gram(4, seed=9)
    weights = make("fairgrad", alpha=2.0, solver="least_squares").weights(gram)
    assert fairgrad_residual(gram, weights, 2.0) < 1e-8
    np.testing.assert_allclose(weights.numpy(), fairgrad_weights(gram, 2.0).numpy(), rtol=1e-6)


def test_float32_input_returns_float32() -> None:
    jacobian = random_jacobian(6, 50, seed=10)
    combination = make("fairgrad").combine(jacobian)
    assert combination.direction.dtype == torch.float32
    assert combination.weights.dtype == torch.float32


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"alpha": -1.0}, "alpha must be a number >= 0"),
        ({"alpha": "two"}, "alpha must be a number"),
        ({"solver": "adam"}, "solver must be one of 'newton', 'least_squares', 'sgd'"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"ridge": -1e-3}, "ridge must be a number >= 0.0"),
        ({"beta": 1.0}, "unknown hyperparameter"),
    ],
)
def test_bad_hyperparameters(hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make("fairgrad", **hparams)


def test_repr() -> None:
    assert (
        repr(make("fairgrad", alpha=2.0)) == "FairGrad(alpha=2.0, solver='newton', max_iter=50, ridge=1e-10)"
    )


@requires_cuda
def test_newton_solve_is_sync_free_and_graph_capturable_on_cuda() -> None:
    jacobian = random_jacobian(10, 1000, seed=12).cuda() + 0.3
    gram = jacobian @ jacobian.T
    combiner = make("fairgrad", alpha=2.0)
    expected = combiner.weights(gram.cpu())
    combiner.weights(gram)  # warm-up: kernels and allocator
    with no_host_sync():
        weights = combiner.weights(gram)
        direction = combiner(jacobian)
    assert torch.allclose(weights.cpu(), expected, rtol=1e-4)
    assert direction.shape == (1000,)

    # Capture the whole solve in a CUDA graph, replay it on a new Gram matrix.
    static_gram = gram.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        combiner.weights(static_gram)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_weights = combiner.weights(static_gram)
    new_gram = 2.0 * gram
    static_gram.copy_(new_gram)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(static_weights.cpu(), combiner.weights(new_gram.cpu()), rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    jacobian=jacobians(min_tasks=1, kinds=("random", "zero_row", "duplicate_rows", "collinear")),
    alpha=st.sampled_from(ALPHAS),
)
def test_numpy_and_tensor_backends_agree(jacobian: torch.Tensor, alpha: float) -> None:
    # The CPU default (NumPy) and the tensor-op iteration used on CUDA are the same algorithm.
    # Where the system has no positive solution (fewer parameters than tasks, opposite gradients)
    # the ridge sets the weights and round-off differs between the two; both stay finite there.
    assume(jacobian.shape[1] >= jacobian.shape[0])
    gram = jacobian.double() @ jacobian.double().T
    numpy_weights = fairgrad_weights(gram, alpha, backend="numpy")
    tensor_weights = fairgrad_weights(gram, alpha, backend="torch")
    assert torch.allclose(numpy_weights, tensor_weights, rtol=1e-6, atol=0.0)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        fairgrad_weights(torch.eye(2), 2.0, backend="cupy")
