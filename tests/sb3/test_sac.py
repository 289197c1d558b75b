"""mtrl_fair.sb3.sac: MultiTaskSAC trains, logs, saves, loads and really applies its combiner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sb3_settings import TASKS, small
from torch import Tensor

import mtrl_fair
from mtrl_fair.combiners import GramianCombiner
from mtrl_fair.sb3.recipe import sample_per_task
from mtrl_fair.sb3.sac import MultiTaskSAC
from mtrl_fair.sb3.vec_env import MetaWorldVecEnv


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
