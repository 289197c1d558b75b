"""Tests of mtrl_fair.jacobian: per-task gradients, the front doors, the ``mean`` shortcut.

What a combiner is given and writes into ``.grad`` is tested in ``test_combined_grad.py``, the
norms, cosines and Gram matrices in ``test_gram.py``; all three use the small regression of
:mod:`jacobian_setup`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from combiner_checks import no_host_sync
from jacobian_setup import (
    NUM_TASKS,
    TOL,
    Batch,
    Setup,
    batched_losses,
    check_written,
    make_loss_fn,
    make_setup,
    params_of,
    reference_mean_grads,
    reference_stacked,
    shared_of,
)
from torch import Tensor, nn

import mtrl_fair.jacobian as jacobian_module
from mtrl_fair.combiners import make
from mtrl_fair.jacobian import (
    CombinedGradient,
    backward_per_task,
    backward_per_task_func,
    per_task_gradients,
    per_task_jacobian,
)

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


def test_mean_func_path_writes_the_gradient_of_the_mean_loss() -> None:
    setup = make_setup()
    shared_names = [name for name, _ in setup.model.named_parameters()]
    stats = backward_per_task_func(
        make_loss_fn(setup), params_of(setup), setup.batch, make("mean"), shared_names=shared_names
    )
    check_written(setup, stats)


def test_mean_generic_path_writes_the_gradient_of_the_mean_loss() -> None:
    setup = make_setup()
    stats = backward_per_task(
        batched_losses(setup), shared_of(setup), make("mean"), task_params=[setup.log_alpha]
    )
    check_written(setup, stats)


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
    for param, ref in zip(shared_of(setup), reference_mean_grads(setup)[0], strict=True):
        torch.testing.assert_close(param.grad, ref, **TOL)
    with pytest.raises(ValueError, match="not in params"):
        backward_per_task_func(no_alpha, params, setup.batch, make("mean"), shared_names=["nope"])


# --------------------------------------------------------------------------------------------------
# The mean shortcut: with ``mean``, no diagnostics and every parameter shared, one backward pass.
# --------------------------------------------------------------------------------------------------


def model_loss_fn(setup: Setup) -> Callable[[dict[str, Tensor], Batch], Tensor]:
    """One task's loss as a function of the model's parameters only (the temperatures held fixed)."""
    loss_fn = make_loss_fn(setup)

    def no_alpha(params: dict[str, Tensor], batch: Batch) -> Tensor:
        return loss_fn({**params, "log_alpha": setup.log_alpha.detach()}, batch)

    return no_alpha


@pytest.fixture
def per_task_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of ``per_task_gradients`` made by the front door (the shortcut makes none)."""
    calls: list[int] = []
    real = jacobian_module.per_task_gradients

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jacobian_module, "per_task_gradients", counting)
    return calls


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mean_shortcut_writes_the_gradient_of_the_mean_loss(
    dtype: torch.dtype, chunk_size: int | None, per_task_calls: list[int]
) -> None:
    setup = make_setup(dtype=dtype)
    params = dict(setup.model.named_parameters())
    stats = backward_per_task_func(
        model_loss_fn(setup), params, setup.batch, make("mean"), chunk_size=chunk_size
    )
    assert per_task_calls == [], "the shortcut forms no per-task gradients"
    expected = torch.autograd.grad(batched_losses(setup).mean(), shared_of(setup))
    for param, ref in zip(shared_of(setup), expected, strict=True):
        torch.testing.assert_close(param.grad, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(stats.weights, torch.full((NUM_TASKS,), 1 / NUM_TASKS, dtype=dtype))
    torch.testing.assert_close(stats.losses, batched_losses(setup).detach(), rtol=1e-6, atol=1e-6)
    assert not stats.losses.requires_grad
    assert not stats.weights.requires_grad
    assert stats.grad_norms is None
    assert stats.cosine is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mean_shortcut_is_the_direction_of_the_per_task_path(
    dtype: torch.dtype, per_task_calls: list[int]
) -> None:
    shortcut, per_task = make_setup(dtype=dtype), make_setup(dtype=dtype)
    fast = backward_per_task_func(
        model_loss_fn(shortcut), dict(shortcut.model.named_parameters()), shortcut.batch, make("mean")
    )
    assert per_task_calls == []
    slow = backward_per_task_func(
        model_loss_fn(per_task),
        dict(per_task.model.named_parameters()),
        per_task.batch,
        make("mean"),
        diagnostics=True,
    )
    assert per_task_calls == [1], "diagnostics need the per-task gradients"
    assert slow.grad_norms is not None
    for a, b in zip(shortcut.model.parameters(), per_task.model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(fast.weights, slow.weights)
    torch.testing.assert_close(fast.losses, slow.losses, rtol=1e-6, atol=1e-6)


def test_mean_shortcut_uses_the_batched_loss_when_given(per_task_calls: list[int]) -> None:
    setup = make_setup()
    loss_fn = model_loss_fn(setup)
    loss_fn_calls: list[int] = []
    batched_calls: list[int] = []

    def counted_loss_fn(params: dict[str, Tensor], batch: Batch) -> Tensor:
        loss_fn_calls.append(1)
        return loss_fn(params, batch)

    def batched_loss() -> Tensor:
        batched_calls.append(1)
        return batched_losses(setup)

    params = dict(setup.model.named_parameters())
    stats = backward_per_task_func(
        counted_loss_fn, params, setup.batch, make("mean"), batched_loss=batched_loss
    )
    assert batched_calls == [1]
    assert loss_fn_calls == [], "neither vmap nor functional_call when the batched loss is given"
    assert per_task_calls == []
    for param, ref in zip(shared_of(setup), reference_mean_grads(setup)[0], strict=True):
        torch.testing.assert_close(param.grad, ref, **TOL)
    torch.testing.assert_close(stats.losses, batched_losses(setup).detach(), **TOL)
    # Only the tensors of params are differentiated: log_alpha, which the batched loss reads, is not.
    assert setup.log_alpha.grad is None

    # The per-task path (here for the diagnostics) has no use for it.
    backward_per_task_func(
        counted_loss_fn, params, setup.batch, make("mean"), diagnostics=True, batched_loss=batched_loss
    )
    assert batched_calls == [1]
    assert per_task_calls == [1]


def test_mean_shortcut_with_aux_returns_the_aux_of_the_batched_loss() -> None:
    setup = make_setup()
    loss_fn = model_loss_fn(setup)

    def with_aux(params: dict[str, Tensor], batch: Batch) -> tuple[Tensor, Tensor]:
        loss = loss_fn(params, batch)
        return loss, 2 * loss.detach()

    def batched_with_aux() -> tuple[Tensor, Tensor]:
        losses = batched_losses(setup)
        return losses, 2 * losses.detach()

    params = dict(setup.model.named_parameters())
    for batched_loss in (None, batched_with_aux):
        stats, aux = backward_per_task_func(
            with_aux, params, setup.batch, make("mean"), has_aux=True, batched_loss=batched_loss
        )
        assert isinstance(stats, CombinedGradient)
        assert aux.shape == (NUM_TASKS,)
        torch.testing.assert_close(aux, 2 * stats.losses, **TOL)
        for param, ref in zip(shared_of(setup), reference_mean_grads(setup)[0], strict=True):
            torch.testing.assert_close(param.grad, ref, **TOL)


def test_mean_shortcut_overwrites_the_grad_in_place(per_task_calls: list[int]) -> None:
    setup = make_setup()
    buffers = []
    for param in shared_of(setup):
        param.grad = torch.full_like(param, 123.0)  # garbage from an earlier update
        buffers.append(param.grad)
    backward_per_task_func(
        model_loss_fn(setup), dict(setup.model.named_parameters()), setup.batch, make("mean")
    )
    assert per_task_calls == []
    for param, buffer, ref in zip(shared_of(setup), buffers, reference_mean_grads(setup)[0], strict=True):
        assert param.grad is buffer, "the .grad buffer is reused, as on the per-task path"
        torch.testing.assert_close(param.grad, ref, **TOL)


def test_mean_shortcut_gives_an_unused_param_a_zero_grad(per_task_calls: list[int]) -> None:
    setup = make_setup()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    unused.grad = torch.full_like(unused, 5.0)
    params = {**dict(setup.model.named_parameters()), "unused": unused}
    backward_per_task_func(model_loss_fn(setup), params, setup.batch, make("mean"))
    assert per_task_calls == []
    assert torch.all(unused.grad == 0)


def test_task_specific_params_turn_the_mean_shortcut_off(per_task_calls: list[int]) -> None:
    setup = make_setup()
    shared_names = [name for name, _ in setup.model.named_parameters()]
    stats = backward_per_task_func(
        make_loss_fn(setup), params_of(setup), setup.batch, make("mean"), shared_names=shared_names
    )
    assert per_task_calls == [1], "the shortcut would give log_alpha the mean, not the sum"
    check_written(setup, stats)
    _, log_alpha_sum = reference_mean_grads(setup)
    torch.testing.assert_close(setup.log_alpha.grad, log_alpha_sum, **TOL)
    assert not torch.allclose(setup.log_alpha.grad, log_alpha_sum / NUM_TASKS)


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
