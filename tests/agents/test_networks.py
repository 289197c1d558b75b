"""Tests of mtrl_fair.agents.networks: the squashed Gaussian, the ensemble twin critic, the actor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from mtrl_fair.agents.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    Actor,
    EnsembleLinear,
    TwinCritic,
    mlp,
    squashed_gaussian,
)


def reference_log_prob(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log π(tanh(u)) from torch.distributions (Normal pushed through a cached TanhTransform)."""
    pre_tanh = mean + log_std.exp() * noise
    transform = TanhTransform(cache_size=1)
    action = transform(pre_tanh)  # caches pre_tanh, so log_prob needs no (unstable) atanh
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [transform])
    return dist.log_prob(action).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squashed_gaussian_matches_torch_distributions(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 16, 4, generator=generator, dtype=dtype)
    log_std = torch.empty(3, 16, 4, dtype=dtype).uniform_(-3.0, 1.0, generator=generator)
    noise = torch.randn(3, 16, 4, generator=generator, dtype=dtype)

    action, log_prob = squashed_gaussian(mean, log_std, noise)

    assert action.shape == (3, 16, 4)
    assert log_prob.shape == (3, 16)
    assert torch.equal(action, torch.tanh(mean + log_std.exp() * noise))
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(log_prob, reference_log_prob(mean, log_std, noise), **tol)


def test_squashed_gaussian_matches_the_textbook_formula_in_float64() -> None:
    """Independent of torch.distributions: N(u; μ, σ) density minus Σ log(1 − tanh² u)."""
    generator = torch.Generator().manual_seed(1)
    mean = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    log_std = torch.empty(50, 3, dtype=torch.float64).uniform_(-2.0, 0.5, generator=generator)
    noise = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    u = mean + log_std.exp() * noise
    expected = (
        -0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi) - torch.log1p(-torch.tanh(u).square())
    ).sum(-1)
    _, log_prob = squashed_gaussian(mean, log_std, noise)
    torch.testing.assert_close(log_prob, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pre_tanh", [-200.0, -30.0, -12.0, 12.0, 30.0, 200.0])
def test_squashed_gaussian_stays_finite_for_large_pre_tanh(pre_tanh: float) -> None:
    mean = torch.full((2, 3), pre_tanh)
    log_std = torch.zeros(2, 3)
    noise = torch.zeros(2, 3)
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    assert torch.isfinite(action).all()
    assert torch.isfinite(log_prob).all()
    assert action.abs().le(1.0).all()
    # log(1 − tanh² u) → log 4 − 2|u| for large |u|; the naive formula would give log(0) = −inf.
    expected = 3 * (-0.5 * math.log(2 * math.pi) - (math.log(4.0) - 2 * abs(pre_tanh)))
    torch.testing.assert_close(log_prob, torch.full((2,), expected), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log_prob, reference_log_prob(mean, log_std, noise), rtol=1e-5, atol=1e-3)


def test_squashed_gaussian_gradients_are_finite_for_large_pre_tanh() -> None:
    mean = torch.tensor([[-80.0, 0.3, 80.0]], requires_grad=True)
    log_std = torch.tensor([[0.5, -1.0, 1.5]], requires_grad=True)
    _, log_prob = squashed_gaussian(mean, log_std, torch.tensor([[1.0, -0.5, 2.0]]))
    log_prob.sum().backward()
    assert mean.grad is not None
    assert torch.isfinite(mean.grad).all()
    assert log_std.grad is not None
    assert torch.isfinite(log_std.grad).all()


def test_squashed_gaussian_is_deterministic_given_the_noise() -> None:
    generator = torch.Generator().manual_seed(2)
    mean, log_std, noise = (torch.randn(8, 5, generator=generator) for _ in range(3))
    torch.manual_seed(0)
    first = squashed_gaussian(mean, log_std, noise)
    torch.manual_seed(123)  # the global RNG plays no part
    second = squashed_gaussian(mean, log_std, noise)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    # And different noise gives a different sample.
    other = squashed_gaussian(mean, log_std, noise + 1.0)
    assert not torch.equal(first[0], other[0])


def test_squashed_gaussian_runs_under_vmap() -> None:
    generator = torch.Generator().manual_seed(3)
    mean, log_std, noise = (torch.randn(4, 6, 2, generator=generator) for _ in range(3))
    batched = torch.func.vmap(squashed_gaussian, randomness="error")(mean, log_std, noise)
    direct = squashed_gaussian(mean, log_std, noise)
    torch.testing.assert_close(batched[0], direct[0])
    torch.testing.assert_close(batched[1], direct[1])


# --------------------------------------------------------------------------------------------------
# TwinCritic and EnsembleLinear
# --------------------------------------------------------------------------------------------------

OBS_DIM, ACTION_DIM, HIDDEN = 7, 3, [32, 32]


def member_forward(critic: TwinCritic, member: int, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Evaluate one member with its own weights, as an ordinary MLP built from plain nn.Linear."""
    layers: list[nn.Module] = []
    for i, ensemble in enumerate(critic.layers):
        weight, bias = ensemble.weight[member], ensemble.bias[member, 0]
        linear = nn.Linear(weight.shape[0], weight.shape[1], dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            linear.bias.copy_(bias)
        layers.append(linear)
        if i < len(critic.layers) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)(torch.cat([obs, action], dim=-1)).squeeze(-1)


@pytest.mark.parametrize("batch_shape", [(5,), (3, 5), (1,)])
def test_twin_critic_shape_and_members_match_separate_networks(batch_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    critic = TwinCritic(OBS_DIM, ACTION_DIM, HIDDEN)
    obs = torch.randn(*batch_shape, OBS_DIM)
    action = torch.randn(*batch_shape, ACTION_DIM)
    q = critic(obs, action)
    assert q.shape == (2, *batch_shape)
    for member in range(2):
        torch.testing.assert_close(
            q[member], member_forward(critic, member, obs, action), rtol=1e-5, atol=1e-6
        )
    # Two members with independent initial weights give different values.
    assert not torch.allclose(q[0], q[1])


def test_twin_critic_with_more_members() -> None:
    torch.manual_seed(1)
    critic = TwinCritic(OBS_DIM, ACTION_DIM, HIDDEN, members=4)
    obs, action = torch.randn(2, 6, OBS_DIM), torch.randn(2, 6, ACTION_DIM)
    q = critic(obs, action)
    assert q.shape == (4, 2, 6)
    torch.testing.assert_close(q[3], member_forward(critic, 3, obs, action), rtol=1e-5, atol=1e-6)


def test_twin_critic_members_have_separate_gradients() -> None:
    torch.manual_seed(2)
    critic = TwinCritic(OBS_DIM, ACTION_DIM, HIDDEN)
    obs, action = torch.randn(4, OBS_DIM), torch.randn(4, ACTION_DIM)
    critic(obs, action)[0].sum().backward()
    for layer in critic.layers:
        assert layer.weight.grad is not None
        assert layer.weight.grad[0].abs().sum() > 0
        assert torch.equal(layer.weight.grad[1], torch.zeros_like(layer.weight.grad[1]))


@pytest.mark.parametrize(("members", "in_features", "out_features"), [(2, 16, 8), (3, 400, 1)])
def test_ensemble_linear_init_bounds(members: int, in_features: int, out_features: int) -> None:
    torch.manual_seed(3)
    layer = EnsembleLinear(members, in_features, out_features)
    assert layer.weight.shape == (members, in_features, out_features)
    assert layer.bias.shape == (members, 1, out_features)
    bound = 1.0 / math.sqrt(in_features)
    assert layer.weight.abs().max() <= bound
    assert layer.bias.abs().max() <= bound
    # Uniform over the whole interval (as nn.Linear), not a narrow or one-sided one.
    assert layer.weight.max() > 0.5 * bound
    assert layer.weight.min() < -0.5 * bound
    assert layer.bias.unique().numel() == layer.bias.numel()
    # Members are initialised independently.
    assert not torch.equal(layer.weight[0], layer.weight[1])
    assert f"members={members}" in repr(layer)


def test_ensemble_linear_matches_a_matmul_per_member() -> None:
    torch.manual_seed(4)
    layer = EnsembleLinear(3, 5, 2)
    x = torch.randn(3, 7, 5)
    expected = torch.stack([x[m] @ layer.weight[m] + layer.bias[m] for m in range(3)])
    torch.testing.assert_close(layer(x), expected)


# --------------------------------------------------------------------------------------------------
# Actor
# --------------------------------------------------------------------------------------------------


def test_actor_shapes() -> None:
    torch.manual_seed(5)
    actor = Actor(OBS_DIM, ACTION_DIM, HIDDEN)
    mean, log_std = actor(torch.randn(3, 4, OBS_DIM))
    assert mean.shape == log_std.shape == (3, 4, ACTION_DIM)


def test_actor_log_std_is_clamped() -> None:
    torch.manual_seed(6)
    actor = Actor(OBS_DIM, ACTION_DIM, HIDDEN)
    last = actor.net[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        # Huge log-std outputs of both signs: the first half of the outputs is the mean.
        last.weight.mul_(1e4)
        last.bias[ACTION_DIM:] = torch.tensor([1e4, -1e4, 0.0])
    mean, log_std = actor(torch.randn(64, OBS_DIM))
    assert log_std.min() >= LOG_STD_MIN
    assert log_std.max() <= LOG_STD_MAX
    assert (log_std == LOG_STD_MAX).any()
    assert (log_std == LOG_STD_MIN).any()
    # The mean is not clamped.
    assert mean.abs().max() > LOG_STD_MAX


def test_mlp_layout() -> None:
    net = mlp(4, [8, 16], 2)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 8), (8, 16), (16, 2)]
    assert sum(isinstance(m, nn.ReLU) for m in net) == 2
    assert not isinstance(net[-1], nn.ReLU)


def test_the_twin_critic_per_task_gradients_equal_vmap() -> None:
    from torch.func import functional_call

    from mtrl_fair.jacobian import per_task_gradients
    from mtrl_fair.layer_jacobian import layer_task_gradients, supports_layer_gradients

    num_tasks, batch, obs_dim, action_dim = 3, 4, 5, 2
    torch.manual_seed(0)
    critic = TwinCritic(obs_dim, action_dim, [8, 8]).double()
    assert supports_layer_gradients(critic)
    obs = torch.randn(num_tasks, batch, obs_dim, dtype=torch.float64)
    action = torch.randn(num_tasks, batch, action_dim, dtype=torch.float64)
    target = torch.randn(num_tasks, batch, dtype=torch.float64)

    def loss_fn(params: dict[str, torch.Tensor] | None, task: tuple[torch.Tensor, ...]) -> torch.Tensor:
        q = critic(task[0], task[1]) if params is None else functional_call(critic, params, (task[0], task[1]))
        return 0.5 * (q - task[2]).square().mean(dim=-1).sum(dim=0)

    _, grads, _ = layer_task_gradients(lambda: (loss_fn(None, (obs, action, target)), None), critic)
    _, expected = per_task_gradients(loss_fn, dict(critic.named_parameters()), (obs, action, target))
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12)
