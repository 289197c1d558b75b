"""mtrl_fair.sb3.recipe: per-task gradients of a per-task loss, combined into ``.grad``."""

from __future__ import annotations

from typing import Any

import torch
from sb3_settings import small
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.agents.sac_losses import critic_losses
from mtrl_fair.combiners import make
from mtrl_fair.jacobian import backward_per_task_func
from mtrl_fair.layer_jacobian import supports_layer_gradients
from mtrl_fair.sb3 import MultiTaskSAC
from mtrl_fair.sb3.recipe import combined_backward, sample_per_task


def _linear_losses() -> tuple[nn.Linear, Tensor, Any]:
    """Two tasks with conflicting gradients of very different sizes on a 2-parameter model."""
    model = nn.Linear(2, 1, bias=False)
    # loss_k(θ) = c_k · θ, so the task gradients are the rows of c: g0 = (10, 0), g1 = (-0.5, 1).
    directions = torch.tensor([[10.0, 0.0], [-0.5, 1.0]])

    def loss_fn(params: dict[str, Tensor], direction: Tensor) -> Tensor:
        return functional_call(model, params, (direction.unsqueeze(0),)).sum() * 0 + (
            params["weight"].reshape(-1) @ direction
        )

    return model, directions, loss_fn


def test_combined_backward_with_mean_is_the_mean_loss_gradient() -> None:
    model, directions, loss_fn = _linear_losses()
    combined_backward(loss_fn, model, directions, make("mean"))
    assert model.weight.grad is not None
    torch.testing.assert_close(model.weight.grad.reshape(-1), directions.mean(dim=0))
    # Same on a real batched MLP loss: the per-task path equals the plain mean-loss backward.
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(4, 5, 3), torch.randn(4, 5)

    def mse(params: dict[str, Tensor], task: tuple[Tensor, Tensor]) -> Tensor:
        return ((functional_call(net, params, (task[0],)).squeeze(-1) - task[1]) ** 2).mean()

    combined_backward(mse, net, (x, y), make("mean"), diagnostics=True)  # the per-task path
    per_task = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    ((net(x).squeeze(-1) - y) ** 2).mean(dim=1).mean().backward()
    for got, expected in zip(per_task, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(got, expected)


def test_combined_backward_with_fairgrad_protects_the_small_conflicting_task() -> None:
    model, directions, loss_fn = _linear_losses()
    g1 = directions[1]
    combined_backward(loss_fn, model, directions, make("mean"))
    assert model.weight.grad is not None
    mean_step = -model.weight.grad.reshape(-1).clone()
    model.weight.grad = None
    result = combined_backward(loss_fn, model, directions, make("fairgrad", alpha=2.0))
    fair_step = -model.weight.grad.reshape(-1)
    # A step along -mean raises task 1's loss; FairGrad's step lowers both, weighting task 1 more.
    assert g1 @ mean_step > 0
    assert g1 @ fair_step < 0
    assert directions[0] @ fair_step < 0
    assert result.weights[1] > result.weights[0]


def test_the_layer_path_of_sb3_networks_equals_the_vmap_path(env: Any) -> None:
    """SB3's MLP critic and actor qualify for per-task gradients from one backward pass; the
    MultiTaskSAC update's combined .grad is the same as through vmap."""
    model = MultiTaskSAC("MlpPolicy", env, combiner="fairgrad", **small())
    model.learn(40 * env.num_envs)
    critic = model._ensemble_critic
    assert supports_layer_gradients(critic)
    assert supports_layer_gradients(model._actor_distribution)
    batch = sample_per_task(model.replay_buffer, 8, env.num_envs)  # type: ignore[arg-type]
    target = batch.rewards.squeeze(-1)
    task_batch = (batch.observations, batch.actions, target)

    def loss_fn(params: dict[str, Tensor], task: tuple[Tensor, ...]) -> Tensor:
        return critic_losses(critic, params, *task)

    params = dict(critic.named_parameters())
    via_layers = combined_backward(
        loss_fn, critic, task_batch, make("fairgrad"), batched_loss=lambda: critic_losses(critic, None, *task_batch)
    )
    layer_grads = [p.grad.clone() for p in critic.parameters()]
    via_vmap = backward_per_task_func(loss_fn, params, task_batch, make("fairgrad"), randomness="error")
    for param, grad in zip(critic.parameters(), layer_grads, strict=True):
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(via_layers.weights, via_vmap.weights, rtol=1e-4, atol=1e-6)
