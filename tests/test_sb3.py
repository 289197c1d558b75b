"""mtrl_fair.sb3: combiners inside Stable-Baselines3's SAC and TD3, and Meta-World as an SB3 VecEnv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import Tensor, nn
from torch.func import functional_call

import mtrl_fair
from mtrl_fair.combiners import GramianCombiner, make
from mtrl_fair.sb3 import (
    MetaWorldVecEnv,
    MultiTaskSAC,
    MultiTaskTD3,
    combined_backward,
    make_vec_env,
    sample_per_task,
)

TASKS = ["reach-v3", "drawer-close-v3"]


def small(**overrides: Any) -> dict[str, Any]:
    """Tiny settings, as a fresh dict each time: SB3 writes into the policy_kwargs it is given."""
    return {
        "policy_kwargs": {"net_arch": [32, 32]},
        "learning_starts": 50,
        "batch_size": 32,
        "device": "cpu",
        **overrides,
    }


@pytest.fixture(scope="module")
def env() -> MetaWorldVecEnv:
    vec_env = make_vec_env("MT10", TASKS, seed=0, max_episode_steps=30)
    yield vec_env
    vec_env.close()


def test_make_vec_env_follows_sb3_conventions(env: MetaWorldVecEnv) -> None:
    obs = env.reset()
    assert obs.shape == (2, 41)
    np.testing.assert_array_equal(obs[:, -2:], np.eye(2))
    assert env.task_names == TASKS
    infos: list[dict[str, Any]] = []
    for _ in range(30):
        obs, rewards, dones, infos = env.step(np.zeros((2, 4)))
    assert rewards.dtype == np.float32
    assert dones.all()  # the 30-step time limit
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == (41,)
        assert set(info["episode"]) == {"r", "l", "t"}
        assert info["episode"]["l"] == 30
        assert info["is_success"] in (True, False)
    # The returned observation starts the next episode; the terminal one is the last of the old.
    assert not np.array_equal(obs[0], infos[0]["terminal_observation"])
    assert len(env.get_attr("max_path_length")) == 2
    assert env.env_is_wrapped(gym.Wrapper) == [False, False]


def test_make_vec_env_rejects_unknown_tasks() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        make_vec_env("MT10", ["reach-v9"])


def test_multitask_sac_trains_logs_weights_and_is_scored_by_evaluate(env: MetaWorldVecEnv) -> None:
    model = MultiTaskSAC("MlpPolicy", env, combiner="fairgrad", combiner_kwargs={"alpha": 2.0}, **small())
    model.learn(total_timesteps=300)
    logged = model.logger.name_to_value
    weights = [logged[f"combiner/critic_weight/{task}"] for task in TASKS]
    assert all(np.isfinite(weights))
    assert all(w > 0 for w in weights)
    assert np.isfinite(logged["train/critic_loss"])
    assert model.num_timesteps >= 300
    result = mtrl_fair.evaluate(model, "MT10", episodes=1, tasks=TASKS)
    assert set(result.per_task) == set(TASKS)


def test_save_load_round_trip_keeps_predictions_and_combiner_state(
    env: MetaWorldVecEnv, tmp_path: Path
) -> None:
    model = MultiTaskSAC("MlpPolicy", env, combiner="famo", per_task_temperature=True, **small())
    model.learn(total_timesteps=200)
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = MultiTaskSAC.load(path, env=env, device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    assert repr(loaded.combiners) == repr(model.combiners)
    for group in ("critic", "actor"):
        saved, restored = model.combiners[group].state_dict(), loaded.combiners[group].state_dict()
        assert saved.keys() == restored.keys()
        for key, value in saved.items():
            if isinstance(value, Tensor):
                torch.testing.assert_close(restored[key], value)
            else:
                assert restored[key] == value
    assert loaded.log_ent_coef.shape == (2,)
    torch.testing.assert_close(loaded.log_ent_coef, model.log_ent_coef)
    loaded.learn(total_timesteps=40)  # and it keeps training


class FirstTaskOnly(GramianCombiner):
    """A spy combiner: all the weight on task 0, and it counts its calls."""

    name = "first_task_only"

    def __init__(self) -> None:
        self.calls = 0

    def weights(self, gram: Tensor) -> Tensor:
        self.calls += 1
        weights = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
        weights[0] = 1.0
        return weights


def test_the_combiner_is_really_applied_in_train(env: MetaWorldVecEnv) -> None:
    model = MultiTaskSAC("MlpPolicy", env, combiner="fairgrad", **small())
    model.learn(total_timesteps=120)
    spy = FirstTaskOnly()
    model.combiners.combiners["critic"] = spy
    model.train(gradient_steps=3, batch_size=32)
    assert spy.calls == 3
    assert model.logger.name_to_value["combiner/critic_weight/reach-v3"] == 1.0
    assert model.logger.name_to_value["combiner/critic_weight/drawer-close-v3"] == 0.0


class UniformWeights(GramianCombiner):
    """The mean as a Gramian combiner: the per-task path, with the mean's update."""

    name = "uniform_weights"

    def weights(self, gram: Tensor) -> Tensor:
        return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype, device=gram.device)


def test_the_mean_shortcut_gives_the_per_task_paths_update(env: MetaWorldVecEnv, tmp_path: Path) -> None:
    # combiner="mean" takes one batched backward on the modules themselves; the per-task path
    # (vmap, functional_call, Gramian) with uniform weights must write the same gradients. The
    # per-task path's actor loss reads a detached critic, so equal critic gradients also show that
    # the shortcut's actor backward adds nothing to the critic's.
    model = MultiTaskSAC("MlpPolicy", env, combiner="mean", **small(learning_starts=10))
    model.learn(total_timesteps=40)
    model.save(tmp_path / "model.zip")
    per_task = MultiTaskSAC.load(tmp_path / "model.zip", env=env, device="cpu")
    for group in ("critic", "actor"):
        per_task.combiners.combiners[group] = UniformWeights()
    batch = sample_per_task(model.replay_buffer, 16, 2)  # type: ignore[arg-type]
    stats = {}
    for agent in (model, per_task):
        torch.manual_seed(0)  # the same action noise
        stats[agent] = agent._update(batch)
    for module in ("critic", "actor"):
        for (name, ours), theirs in zip(
            getattr(model, module).named_parameters(), getattr(per_task, module).parameters(), strict=True
        ):
            assert ours.grad is not None, name
            assert theirs.grad is not None, name
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=f"{module}.{name}")
    for key in ("critic_loss", "actor_loss"):
        torch.testing.assert_close(stats[model][key], stats[per_task][key])


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


def test_multitask_td3_runs_and_round_trips(env: MetaWorldVecEnv, tmp_path: Path) -> None:
    model = MultiTaskTD3("MlpPolicy", env, combiner="pcgrad", **small())
    model.learn(total_timesteps=200)
    assert "combiner/actor_weight/reach-v3" in model.logger.name_to_value
    model.save(tmp_path / "td3.zip")
    loaded = MultiTaskTD3.load(tmp_path / "td3.zip", env=env, device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )


def test_bad_arguments_are_clear_errors(env: MetaWorldVecEnv) -> None:
    with pytest.raises(ValueError, match="unknown combiner"):
        MultiTaskSAC("MlpPolicy", env, combiner="nope", **small())
    with pytest.raises(ValueError, match="alpha"):
        MultiTaskSAC("MlpPolicy", env, combiner="fairgrad", combiner_kwargs={"alpha": -1}, **small())
    with pytest.raises(ValueError, match="allowed: critic, actor"):
        MultiTaskSAC("MlpPolicy", env, combine=["temperature"], **small())
    with pytest.raises(ValueError, match="gSDE"):
        MultiTaskSAC("MlpPolicy", env, use_sde=True, **small())
    with pytest.raises(ValueError, match="registry name"):
        MultiTaskSAC("MlpPolicy", env, combiner=make("mean"), **small())  # type: ignore[arg-type]


class ZerosEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(6, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(6, np.float32), 0.0, False, False, {}


def test_an_env_without_one_hot_task_ids_is_refused() -> None:
    env = DummyVecEnv([ZerosEnv, ZerosEnv])
    model = MultiTaskSAC("MlpPolicy", env, combiner="mean", **small(learning_starts=10))
    with pytest.raises(ValueError, match="one-hot id of task k"):
        model.learn(total_timesteps=60)


def test_target_networks_follow_sb3s_polyak_rule(env: MetaWorldVecEnv) -> None:
    from stable_baselines3.common.utils import polyak_update

    model = MultiTaskSAC("MlpPolicy", env, combiner="mean", tau=0.3, **small(learning_starts=10))
    model.learn(total_timesteps=30)
    expected = [p.detach().clone() for p in model.critic_target.parameters()]
    model.train(gradient_steps=1, batch_size=32)
    # SB3's rule applied to the targets as they were, towards the critic after its step.
    polyak_update(model.critic.parameters(), expected, 0.3)
    for ours, theirs in zip(model.critic_target.parameters(), expected, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_fused_adam_is_chosen_unless_the_user_chose(env: MetaWorldVecEnv) -> None:
    from mtrl_fair.sb3 import _fused_adam

    chosen = _fused_adam({"device": "cuda", "policy_kwargs": {"net_arch": [8]}})
    assert chosen["policy_kwargs"] == {"net_arch": [8], "optimizer_kwargs": {"fused": True}}
    own = {"device": "cuda", "policy_kwargs": {"optimizer_kwargs": {"eps": 1e-5}}}
    assert _fused_adam(own) == own
    model = MultiTaskSAC("MlpPolicy", env, combiner="mean", **small())
    for optimizer in (model.actor.optimizer, model.critic.optimizer, model.ent_coef_optimizer):
        assert optimizer.defaults["fused"] is True
