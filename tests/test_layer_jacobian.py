"""Per-task gradients of linear layers from one backward pass equal those of torch.func.vmap."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.combiners import make
from mtrl_fair.jacobian import backward_per_task_func, per_task_gradients
from mtrl_fair.layer_jacobian import layer_task_gradients, supports_layer_gradients

K, B, IN = 3, 5, 4


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 6), nn.ReLU(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(K, B, IN, generator=generator, dtype=torch.float64)
    y = torch.randn(K, B, 1, generator=generator, dtype=torch.float64)
    return x, y


def vmap_reference(module: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    def loss_fn(params: dict[str, Tensor], task: tuple[Tensor, Tensor]) -> Tensor:
        return ((functional_call(module, params, (task[0],)) - task[1]) ** 2).mean()

    return per_task_gradients(loss_fn, dict(module.named_parameters()), (x, y))


def test_per_task_gradients_of_an_mlp_equal_vmap() -> None:
    module, (x, y) = mlp(), batch()
    losses, grads, aux = layer_task_gradients(lambda: (((module(x) - y) ** 2).mean(dim=(1, 2)), "aux"), module)
    expected_losses, expected = vmap_reference(module, x, y)
    assert aux == "aux"
    torch.testing.assert_close(losses, expected_losses)
    assert grads.keys() == expected.keys()
    for name in expected:
        assert grads[name].shape == (K, *dict(module.named_parameters())[name].shape)
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)


def test_rows_may_come_flattened_task_major() -> None:
    module, (x, y) = mlp(), batch()
    flat_losses = lambda: (((module(x.reshape(K * B, IN)) - y.reshape(K * B, 1)) ** 2).reshape(K, B).mean(1), None)  # noqa: E731
    _, grads, _ = layer_task_gradients(flat_losses, module)
    _, expected = vmap_reference(module, x, y)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)


def test_a_layer_called_twice_sums_and_an_unused_layer_is_zero() -> None:
    shared, unused = nn.Linear(IN, IN).double(), nn.Linear(IN, 2).double()
    module = nn.ModuleDict({"shared": shared, "unused": unused})
    x, _ = batch()

    def twice(params: dict[str, Tensor] | None, task: Tensor) -> Tensor:
        if params is None:
            return shared(shared(task)).square().mean(dim=(-2, -1))
        call = lambda inputs: functional_call(module["shared"], {  # noqa: E731
            "weight": params["shared.weight"], "bias": params["shared.bias"]}, (inputs,))
        return call(call(task)).square().mean()

    _, grads, _ = layer_task_gradients(lambda: (twice(None, x), None), module)
    params = dict(module.named_parameters())
    _, expected = per_task_gradients(twice, params, x)
    for name in ("shared.weight", "shared.bias"):
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-12)
    assert torch.equal(grads["unused.weight"], torch.zeros(K, 2, IN, dtype=torch.float64))
    assert torch.equal(grads["unused.bias"], torch.zeros(K, 2, dtype=torch.float64))


def test_another_module_read_by_the_loss_is_not_differentiated() -> None:
    actor, critic = mlp(), mlp()
    x, _ = batch()
    _, grads, _ = layer_task_gradients(lambda: (critic(actor(x).expand(-1, -1, IN)).mean(dim=(1, 2)), None), actor)
    assert grads.keys() == dict(actor.named_parameters()).keys()
    assert all(p.grad is None for p in critic.parameters())


def test_which_modules_qualify() -> None:
    assert supports_layer_gradients(mlp())
    assert not supports_layer_gradients(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))

    class WithLooseParameter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(2))

    assert not supports_layer_gradients(WithLooseParameter())


@pytest.mark.parametrize("name", ["fairgrad", "mgda", "pcgrad", "famo"])
def test_the_front_door_takes_the_layer_path_and_writes_the_same_grad(name: str) -> None:
    module, (x, y) = mlp(), batch()
    params = dict(module.named_parameters())

    def loss_fn(p: dict[str, Tensor], task: tuple[Tensor, Tensor]) -> Tensor:
        return ((functional_call(module, p, (task[0],)) - task[1]) ** 2).mean()

    def batched() -> Tensor:
        return ((module(x) - y) ** 2).mean(dim=(1, 2))

    torch.manual_seed(3)
    via_vmap = backward_per_task_func(loss_fn, params, (x, y), make(name), diagnostics=True)
    expected = [p.grad.clone() for p in module.parameters()]
    torch.manual_seed(3)
    via_layers = backward_per_task_func(
        loss_fn, params, (x, y), make(name), diagnostics=True, batched_loss=batched, module=module
    )
    for param, grad in zip(module.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(via_layers.weights, via_vmap.weights, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(via_layers.cosine, via_vmap.cosine)


def test_a_module_that_does_not_qualify_takes_the_vmap_path() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(IN, 3), nn.LayerNorm(3), nn.Linear(3, 1)).double()
    x, y = batch()
    params = dict(module.named_parameters())

    def loss_fn(p: dict[str, Tensor], task: tuple[Tensor, Tensor]) -> Tensor:
        return ((functional_call(module, p, (task[0],)) - task[1]) ** 2).mean()

    calls = []

    def batched() -> Tensor:
        calls.append(1)
        return ((module(x) - y) ** 2).mean(dim=(1, 2))

    backward_per_task_func(loss_fn, params, (x, y), make("fairgrad"), batched_loss=batched, module=module)
    assert calls == []  # vmap over loss_fn instead
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
