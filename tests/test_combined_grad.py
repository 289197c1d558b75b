"""Tests of mtrl_fair.combined_grad: what a combiner is given, and what it writes into ``.grad``.

The per-task gradients come from :func:`mtrl_fair.jacobian.backward_per_task` on the small
regression of :mod:`jacobian_setup`, or are given to :func:`write_combined_grad` directly.
"""

from __future__ import annotations

import pytest
import torch
from jacobian_setup import (
    NUM_TASKS,
    TOL,
    batched_losses,
    check_written,
    make_setup,
    reference_rows,
    reference_stacked,
    shared_of,
)
from torch import Tensor

from mtrl_fair.combined_grad import write_combined_grad
from mtrl_fair.combiners import Combination, Combiner, GramianCombiner, make
from mtrl_fair.jacobian import backward_per_task


class _Recorder(Combiner):
    """Sums the rows with weight 1 and records what it was given."""

    name = "recorder"

    def __init__(self, requires_losses: bool) -> None:
        self.requires_losses = requires_losses  # type: ignore[misc]
        self.seen: list[tuple[Tensor, Tensor | None]] = []

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        self.seen.append((jacobian, losses))
        weights = torch.ones(jacobian.shape[0], dtype=jacobian.dtype)
        return Combination(weights @ jacobian, weights)


@pytest.mark.parametrize("requires_losses", [False, True])
def test_combiner_gets_the_flat_jacobian_and_losses_only_if_needed(requires_losses: bool) -> None:
    setup = make_setup()
    ref_losses, ref_grads = reference_stacked(setup)
    recorder = _Recorder(requires_losses)
    backward_per_task(batched_losses(setup), shared_of(setup), recorder)
    ((jacobian, losses),) = recorder.seen
    expected = torch.cat([g.reshape(NUM_TASKS, -1) for g in ref_grads[:-1]], dim=1)
    torch.testing.assert_close(jacobian, expected, **TOL)
    if requires_losses:
        assert losses is not None
        assert not losses.requires_grad
        torch.testing.assert_close(losses, ref_losses, **TOL)
    else:
        assert losses is None
    for param, ref in zip(shared_of(setup), ref_grads[:-1], strict=True):  # weights 1: the sum of the rows
        torch.testing.assert_close(param.grad, ref.sum(0), **TOL)


def test_write_combined_grad_validates_shapes() -> None:
    setup = make_setup()
    shared = shared_of(setup)
    losses = torch.zeros(NUM_TASKS, dtype=torch.float64)
    bad = [torch.zeros(NUM_TASKS + 1, *p.shape, dtype=torch.float64) for p in shared]
    with pytest.raises(ValueError, match=r"\(K, \*param.shape\)"):
        write_combined_grad(make("mean"), shared, bad, losses=losses)
    with pytest.raises(ValueError, match="gradients"):
        write_combined_grad(make("mean"), shared, bad[:-1], losses=losses)


def test_task_specific_params_get_their_own_gradients() -> None:
    setup = make_setup()
    _, rows = reference_rows(setup)
    backward_per_task(batched_losses(setup), shared_of(setup), make("mean"), task_params=[setup.log_alpha])
    expected = torch.stack([rows[k][-1][k] for k in range(NUM_TASKS)])  # d loss_k / d log_alpha[k]
    torch.testing.assert_close(setup.log_alpha.grad, expected, **TOL)
    for k in range(NUM_TASKS):  # and no task touches another's slice
        off_diagonal = torch.cat([rows[k][-1][:k], rows[k][-1][k + 1 :]])
        assert torch.all(off_diagonal == 0)


def test_grad_is_overwritten_in_place() -> None:
    setup = make_setup()
    buffers = []
    for param in [*shared_of(setup), setup.log_alpha]:
        param.grad = torch.full_like(param, 123.0)
        buffers.append(param.grad)
    stats = backward_per_task(
        batched_losses(setup), shared_of(setup), make("mean"), task_params=[setup.log_alpha]
    )
    check_written(setup, stats)
    for param, buffer in zip([*shared_of(setup), setup.log_alpha], buffers, strict=True):
        assert param.grad is buffer


class _GramRecorder(GramianCombiner):
    """Weights 1 for every task; records the Gram matrix it was given."""

    name = "gram-recorder"

    def __init__(self) -> None:
        self.seen: list[Tensor] = []

    def weights(self, gram: Tensor) -> Tensor:
        self.seen.append(gram)
        return torch.ones(gram.shape[0], dtype=gram.dtype)


def test_a_gramian_combiner_gets_the_gram_of_the_flat_jacobian() -> None:
    setup = make_setup()
    _, ref_grads = reference_stacked(setup)
    recorder = _GramRecorder()
    stats = backward_per_task(batched_losses(setup), shared_of(setup), recorder)
    (gram,) = recorder.seen
    jacobian = torch.cat([g.reshape(NUM_TASKS, -1) for g in ref_grads[:-1]], dim=1)
    torch.testing.assert_close(gram, jacobian @ jacobian.T, **TOL)
    torch.testing.assert_close(stats.weights, torch.ones(NUM_TASKS, dtype=torch.float64))
    for param, ref in zip(shared_of(setup), ref_grads[:-1], strict=True):  # weights 1: the sum of the rows
        torch.testing.assert_close(param.grad, ref.sum(0), **TOL)


def test_write_combined_grad_refuses_bad_arguments() -> None:
    setup = make_setup()
    shared = shared_of(setup)
    losses = torch.zeros(NUM_TASKS, dtype=torch.float64)
    grads = [torch.zeros(NUM_TASKS, *p.shape, dtype=torch.float64) for p in shared]
    with pytest.raises(ValueError, match="at least one shared parameter"):
        write_combined_grad(make("mean"), [], [], losses=losses)
    with pytest.raises(ValueError, match=r"losses must be a \(K,\) vector"):
        write_combined_grad(make("mean"), shared, grads, losses=losses.reshape(2, 2))
    with pytest.raises(ValueError, match="task-specific parameters but 0 gradients"):
        write_combined_grad(make("mean"), shared, grads, losses=losses, task_params=[setup.log_alpha])
