"""Tests of mtrl_fair.jacobian: per-task gradients, combined .grad, diagnostics."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from combiner_checks import no_host_sync
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.combiners import Combination, Combiner, make
from mtrl_fair.jacobian import (
    CombinedGradient,
    backward_per_task,
    backward_per_task_func,
    gradient_diagnostics,
    per_task_gradients,
    per_task_jacobian,
    write_combined_grad,
)

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


# --------------------------------------------------------------------------------------------------
# Per-task gradients equal K separate backward passes.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_vmap_path_matches_separate_backwards(chunk_size: int | None) -> None:
    setup = make_setup()
    ref_losses, ref_grads = reference_stacked(setup)
    losses, grads = per_task_gradients(
        make_loss_fn(setup), params_of(setup), setup.batch, chunk_size=chunk_size
    )
    torch.testing.assert_close(losses, ref_losses, **TOL)
    assert list(grads) == list(params_of(setup))
    for grad, ref in zip(grads.values(), ref_grads, strict=True):
        assert grad.shape == (NUM_TASKS, *ref.shape[1:])
        torch.testing.assert_close(grad, ref, **TOL)
        assert not grad.requires_grad


def test_vmap_path_has_aux() -> None:
    setup = make_setup()
    loss_fn = make_loss_fn(setup)

    def with_aux(params: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss = loss_fn(params, batch)
        return loss, {"twice": 2 * loss.detach()}

    losses, grads, aux = per_task_gradients(with_aux, params_of(setup), setup.batch, has_aux=True)
    torch.testing.assert_close(aux["twice"], 2 * losses, **TOL)
    assert set(grads) == set(params_of(setup))


def test_vmap_randomness() -> None:
    setup = make_setup()

    def noisy(params: dict[str, Tensor], batch: Batch) -> Tensor:
        return make_loss_fn(setup)(params, batch) + 0.0 * torch.randn(())

    per_task_gradients(noisy, params_of(setup), setup.batch)  # default "different" works
    with pytest.raises(RuntimeError):
        per_task_gradients(noisy, params_of(setup), setup.batch, randomness="error")


def test_generic_path_matches_separate_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = make_setup()
    ref_losses, ref_grads = reference_stacked(setup)
    losses = batched_losses(setup)
    torch.testing.assert_close(losses.detach(), ref_losses, **TOL)

    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    grads = per_task_jacobian(losses, list(params_of(setup).values()))
    assert calls == [True], "a single batched backward, never K passes"
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, **TOL)


class _NoBatchingRule(torch.autograd.Function):
    """Identity whose backward reads a value back to the host: it cannot be vmapped."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * float(grad.reshape(-1)[0].item() == grad.reshape(-1)[0].item())


def test_generic_path_falls_back_to_a_loop() -> None:
    setup = make_setup()
    _, ref_grads = reference_stacked(setup)
    losses = _NoBatchingRule.apply(batched_losses(setup))
    with pytest.warns(RuntimeWarning, match="separate backward passes"):
        grads = per_task_jacobian(losses, list(params_of(setup).values()))
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, **TOL)


def test_generic_path_unused_params_get_zeros() -> None:
    setup = make_setup()
    unused = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    frozen = torch.ones(2, dtype=torch.float64)  # does not require grad
    grads = per_task_jacobian(batched_losses(setup), [unused, *shared_of(setup), frozen])
    assert grads[0].shape == (NUM_TASKS, 3, 2)
    assert grads[-1].shape == (NUM_TASKS, 2)
    assert torch.all(grads[0] == 0)
    assert torch.all(grads[-1] == 0)


def test_generic_path_rejects_bad_losses() -> None:
    setup = make_setup()
    with pytest.raises(ValueError, match=r"\(K,\)"):
        per_task_jacobian(batched_losses(setup).sum(), shared_of(setup))
    with pytest.raises(ValueError, match="require grad"):
        per_task_jacobian(batched_losses(setup).detach(), shared_of(setup))


# --------------------------------------------------------------------------------------------------
# The combined .grad.
# --------------------------------------------------------------------------------------------------


def _reference_mean_grads(setup: Setup) -> tuple[list[Tensor], Tensor]:
    shared = list(torch.autograd.grad(batched_losses(setup).mean(), shared_of(setup)))
    # Each task only touches its own slice of log_alpha, so its gradient is the sum (not the mean).
    (log_alpha_sum,) = torch.autograd.grad(batched_losses(setup).sum(), [setup.log_alpha])
    return shared, log_alpha_sum


def _check_written(setup: Setup, stats: CombinedGradient) -> None:
    ref_shared, ref_log_alpha = _reference_mean_grads(setup)
    for param, ref in zip(shared_of(setup), ref_shared, strict=True):
        torch.testing.assert_close(param.grad, ref, **TOL)
    torch.testing.assert_close(setup.log_alpha.grad, ref_log_alpha, **TOL)
    torch.testing.assert_close(stats.weights, torch.full((NUM_TASKS,), 1 / NUM_TASKS, dtype=torch.float64))
    torch.testing.assert_close(stats.losses, batched_losses(setup).detach(), **TOL)
    assert not stats.losses.requires_grad
    assert stats.grad_norms is None
    assert stats.cosine is None


def test_mean_func_path_writes_the_gradient_of_the_mean_loss() -> None:
    setup = make_setup()
    shared_names = [name for name, _ in setup.model.named_parameters()]
    stats = backward_per_task_func(
        make_loss_fn(setup), params_of(setup), setup.batch, make("mean"), shared_names=shared_names
    )
    _check_written(setup, stats)


def test_mean_generic_path_writes_the_gradient_of_the_mean_loss() -> None:
    setup = make_setup()
    stats = backward_per_task(
        batched_losses(setup), shared_of(setup), make("mean"), task_params=[setup.log_alpha]
    )
    _check_written(setup, stats)


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
    _check_written(setup, stats)
    for param, buffer in zip([*shared_of(setup), setup.log_alpha], buffers, strict=True):
        assert param.grad is buffer


def test_unused_shared_param_gets_zero_grad() -> None:
    setup = make_setup()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    backward_per_task(batched_losses(setup), [*shared_of(setup), unused], make("mean"))
    assert torch.all(unused.grad == 0)


def test_func_path_all_shared_by_default_and_unknown_names() -> None:
    setup = make_setup()
    params = dict(setup.model.named_parameters())
    loss_fn = make_loss_fn(setup)

    def no_alpha(params: dict[str, Tensor], batch: Batch) -> Tensor:
        return loss_fn({**params, "log_alpha": setup.log_alpha.detach()}, batch)

    backward_per_task_func(no_alpha, params, setup.batch, make("mean"))
    for param, ref in zip(shared_of(setup), _reference_mean_grads(setup)[0], strict=True):
        torch.testing.assert_close(param.grad, ref, **TOL)
    with pytest.raises(ValueError, match="not in params"):
        backward_per_task_func(no_alpha, params, setup.batch, make("mean"), shared_names=["nope"])


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


# --------------------------------------------------------------------------------------------------
# Diagnostics.
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


# --------------------------------------------------------------------------------------------------
# GPU: no host synchronisation.
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["mean", "fairgrad"])
def test_gpu_update_without_host_sync(method: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    combiner = make(method)
    device = torch.device("cuda")
    setup = make_setup(dtype=torch.float32)
    setup.model.to(device)
    log_alpha = nn.Parameter(setup.log_alpha.detach().to(device))
    setup = Setup(setup.model, log_alpha, Batch(*(field.to(device) for field in setup.batch)))
    params = params_of(setup)
    shared_names = [name for name, _ in setup.model.named_parameters()]

    def update() -> CombinedGradient:
        return backward_per_task_func(
            make_loss_fn(setup), params, setup.batch, combiner, shared_names=shared_names, diagnostics=True
        )

    update()  # warm-up: lazy initialisation may synchronise once
    with no_host_sync():
        stats = update()
    assert stats.weights.device.type == "cuda"
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in params.values())
    assert torch.isfinite(stats.weights).all()
