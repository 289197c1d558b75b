"""Tests of mtrl_fair.gram: the Gram matrix of the per-task gradients, their norms and cosines.

The diagnostics are checked both through the front doors of :mod:`mtrl_fair.jacobian` (on the small
regression of :mod:`jacobian_setup`) and on hand-made matrices.
"""

from __future__ import annotations

import pytest
import torch
from jacobian_setup import (
    NUM_TASKS,
    TOL,
    Batch,
    batched_losses,
    make_loss_fn,
    make_setup,
    reference_stacked,
    shared_of,
)
from torch import Tensor

from mtrl_fair.combiners import make
from mtrl_fair.gram import gradient_diagnostics, gram_diagnostics, gram_of, mean_pairwise_cosine
from mtrl_fair.jacobian import backward_per_task, backward_per_task_func

# --------------------------------------------------------------------------------------------------
# Norms and cosines.
# --------------------------------------------------------------------------------------------------


def test_diagnostics_norms_and_cosine() -> None:
    setup = make_setup()
    _, ref_grads = reference_stacked(setup)
    jacobian = torch.cat([g.reshape(NUM_TASKS, -1) for g in ref_grads[:-1]], dim=1)
    stats = backward_per_task(batched_losses(setup), shared_of(setup), make("mean"), diagnostics=True)
    assert stats.grad_norms is not None
    assert stats.cosine is not None
    unit = jacobian / jacobian.norm(dim=1, keepdim=True)
    torch.testing.assert_close(stats.grad_norms, jacobian.norm(dim=1), **TOL)
    torch.testing.assert_close(stats.cosine, unit @ unit.T, **TOL)
    torch.testing.assert_close(stats.cosine.diagonal(), torch.ones(NUM_TASKS, dtype=torch.float64), **TOL)


def test_diagnostics_finite_for_a_zero_gradient_task() -> None:
    setup = make_setup()
    scale = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)

    def loss_fn(params: dict[str, Tensor], batch: tuple[Tensor, Batch]) -> Tensor:
        task_scale, one = batch
        return task_scale * make_loss_fn(setup)({**params, "log_alpha": setup.log_alpha.detach()}, one)

    params = dict(setup.model.named_parameters())
    stats = backward_per_task_func(loss_fn, params, (scale, setup.batch), make("mean"), diagnostics=True)
    assert stats.grad_norms is not None
    assert stats.cosine is not None
    assert torch.isfinite(stats.grad_norms).all()
    assert torch.isfinite(stats.cosine).all()
    assert stats.grad_norms[0] == 0
    assert torch.all(stats.cosine[0] == 0)
    assert torch.all(stats.cosine[:, 0] == 0)
    assert torch.all(stats.grad_norms[1:] > 0)
    torch.testing.assert_close(stats.cosine[1:, 1:].diagonal(), torch.ones(3, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_gradient_diagnostics_are_scale_safe(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(3, 10, generator=generator, dtype=torch.float64) * scale
    jacobian[1] = 0.0
    norms, cosine = gradient_diagnostics(jacobian)
    assert torch.isfinite(cosine).all()
    assert torch.all(cosine.abs() <= 1)
    torch.testing.assert_close(norms, jacobian.norm(dim=1))
    assert cosine[0, 0] == pytest.approx(1.0)


def test_gram_diagnostics_of_the_gram_matrix_are_those_of_the_jacobian() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(4, 9, generator=generator, dtype=torch.float64)
    jacobian[2] = 0.0
    norms, cosine = gram_diagnostics(jacobian @ jacobian.T)
    expected_norms, expected_cosine = gradient_diagnostics(jacobian)
    torch.testing.assert_close(norms, expected_norms, **TOL)
    torch.testing.assert_close(cosine, expected_cosine, **TOL)
    torch.testing.assert_close(norms, jacobian.norm(dim=1), **TOL)


# --------------------------------------------------------------------------------------------------
# The mean pairwise cosine.
# --------------------------------------------------------------------------------------------------


def test_mean_pairwise_cosine_is_the_mean_of_the_off_diagonal_entries() -> None:
    # Not symmetric, and a diagonal that is not 1: only the 6 off-diagonal entries count.
    cosine = torch.tensor(
        [
            [7.0, 0.1, -0.2],
            [0.3, 7.0, 0.4],
            [-0.5, 0.6, 7.0],
        ],
        dtype=torch.float64,
    )
    by_hand = (0.1 - 0.2 + 0.3 + 0.4 - 0.5 + 0.6) / 6
    result = mean_pairwise_cosine(cosine)
    assert result is not None
    assert result.shape == ()
    assert float(result) == pytest.approx(by_hand, rel=1e-12)


def test_mean_pairwise_cosine_of_two_tasks_is_their_cosine() -> None:
    result = mean_pairwise_cosine(torch.tensor([[1.0, -0.25], [-0.25, 1.0]]))
    assert result is not None
    assert float(result) == pytest.approx(-0.25)


def test_mean_pairwise_cosine_of_one_task_is_zero() -> None:
    result = mean_pairwise_cosine(torch.ones(1, 1, dtype=torch.float64))
    assert result is not None
    assert result.shape == ()
    assert result.dtype == torch.float64
    assert float(result) == 0.0


def test_mean_pairwise_cosine_of_none_is_none() -> None:
    assert mean_pairwise_cosine(None) is None


# --------------------------------------------------------------------------------------------------
# gram_of: J Jᵀ, with large blocks split into a batch of shorter products.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "widths",
    [
        # Small blocks (concatenated) and large ones whose width divides by 8, by 4 only, by 2 only
        # and by none of them (one chunk).
        (3, 1, 8192, 4100, 5, 4098, 4097),
        (4096,),  # the smallest large block, alone
        (4097, 4096),  # large blocks only
        (7,),  # one small block only
        (2, 3, 4095),  # small blocks only, the widest just under the limit
    ],
    ids=["mixed", "one-large", "large-only", "one-small", "small-only"],
)
def test_gram_of_is_j_times_j_transposed(widths: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(widths))
    blocks = [torch.randn(3, width, generator=generator, dtype=torch.float64) for width in widths]
    jacobian = torch.cat(blocks, dim=1)
    gram = gram_of(blocks)
    assert gram.shape == (3, 3)
    torch.testing.assert_close(gram, jacobian @ jacobian.T, rtol=1e-12, atol=1e-9)
