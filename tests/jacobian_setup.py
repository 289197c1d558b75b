"""A small multi-task regression for the tests of the per-task gradients and what is made of them.

K tasks share a two-layer network; each task also has its own temperature ``log_alpha[k]``. The
references are K separate ``autograd.grad`` calls, one per task. Used by ``test_jacobian.py``,
``test_combined_grad.py`` and ``test_gram.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.combined_grad import CombinedGradient

NUM_TASKS = 4
BATCH = 6
IN, HIDDEN = 5, 7
TOL = {"rtol": 1e-10, "atol": 1e-12}


class Batch(NamedTuple):
    task: Tensor  # () per task: the task index
    x: Tensor  # (B, IN)
    y: Tensor  # (B, 1)


class Setup(NamedTuple):
    model: nn.Module
    log_alpha: nn.Parameter
    batch: Batch  # every field with the task dimension first


def make_setup(num_tasks: int = NUM_TASKS, seed: int = 0, dtype: torch.dtype = torch.float64) -> Setup:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1)).to(dtype)
    log_alpha = nn.Parameter(torch.randn(num_tasks, dtype=dtype))
    batch = Batch(
        task=torch.arange(num_tasks),
        x=torch.randn(num_tasks, BATCH, IN, dtype=dtype),
        y=torch.randn(num_tasks, BATCH, 1, dtype=dtype),
    )
    return Setup(model, log_alpha, batch)


def params_of(setup: Setup) -> dict[str, Tensor]:
    return {**dict(setup.model.named_parameters()), "log_alpha": setup.log_alpha}


def shared_of(setup: Setup) -> list[Tensor]:
    return list(setup.model.parameters())


def make_loss_fn(setup: Setup):
    """One task's loss: MSE plus a term in that task's own temperature."""

    def loss_fn(params: dict[str, Tensor], batch: Batch) -> Tensor:
        weights = {k: v for k, v in params.items() if k != "log_alpha"}
        pred = functional_call(setup.model, weights, (batch.x,))
        mse = ((pred - batch.y) ** 2).mean()
        # Not params["log_alpha"][batch.task]: a 0-d index tensor is read back with .item().
        alpha = params["log_alpha"].index_select(0, batch.task.reshape(1)).squeeze(0).exp()
        return mse + alpha * pred.mean()

    return loss_fn


def batched_losses(setup: Setup) -> Tensor:
    """All K task losses from one ordinary (non-functional) forward."""
    pred = setup.model(setup.batch.x)  # (K, B, 1)
    mse = ((pred - setup.batch.y) ** 2).mean(dim=(1, 2))
    return mse + setup.log_alpha.exp() * pred.mean(dim=(1, 2))


def reference_rows(setup: Setup) -> tuple[Tensor, list[list[Tensor]]]:
    """K separate autograd.grad calls, one per task: rows[k][j] = d loss_k / d param_j."""
    params = list(params_of(setup).values())
    losses, rows = [], []
    for k in range(NUM_TASKS):
        one = Batch(*(field[k] for field in setup.batch))
        loss = make_loss_fn(setup)(params_of(setup), one)
        losses.append(loss.detach())
        rows.append(list(torch.autograd.grad(loss, params)))
    return torch.stack(losses), rows


def reference_stacked(setup: Setup) -> tuple[Tensor, list[Tensor]]:
    losses, rows = reference_rows(setup)
    return losses, [torch.stack([row[j] for row in rows]) for j in range(len(rows[0]))]


def reference_mean_grads(setup: Setup) -> tuple[list[Tensor], Tensor]:
    """What the ``mean`` combiner must write: the mean-loss gradient of the shared parameters and
    the summed per-task gradient of ``log_alpha``."""
    shared = list(torch.autograd.grad(batched_losses(setup).mean(), shared_of(setup)))
    # Each task only touches its own slice of log_alpha, so its gradient is the sum (not the mean).
    (log_alpha_sum,) = torch.autograd.grad(batched_losses(setup).sum(), [setup.log_alpha])
    return shared, log_alpha_sum


def check_written(setup: Setup, stats: CombinedGradient) -> None:
    """The ``.grad`` and statistics of a ``mean`` combine without diagnostics, against the references."""
    ref_shared, ref_log_alpha = reference_mean_grads(setup)
    for param, ref in zip(shared_of(setup), ref_shared, strict=True):
        torch.testing.assert_close(param.grad, ref, **TOL)
    torch.testing.assert_close(setup.log_alpha.grad, ref_log_alpha, **TOL)
    torch.testing.assert_close(stats.weights, torch.full((NUM_TASKS,), 1 / NUM_TASKS, dtype=torch.float64))
    torch.testing.assert_close(stats.losses, batched_losses(setup).detach(), **TOL)
    assert not stats.losses.requires_grad
    assert stats.grad_norms is None
    assert stats.cosine is None
