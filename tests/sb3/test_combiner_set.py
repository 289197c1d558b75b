"""mtrl_fair.sb3.combiner_set: what the multi-task agents share (argument checks, the one-hot check,
fused Adam), tested through MultiTaskSAC."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from sb3_settings import small
from stable_baselines3.common.vec_env import DummyVecEnv

from mtrl_fair.combiners import make
from mtrl_fair.sb3.combiner_set import fused_adam
from mtrl_fair.sb3.sac import MultiTaskSAC
from mtrl_fair.sb3.vec_env import MetaWorldVecEnv


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


def test_fused_adam_is_chosen_unless_the_user_chose(env: MetaWorldVecEnv) -> None:
    chosen = fused_adam({"device": "cuda", "policy_kwargs": {"net_arch": [8]}})
    assert chosen["policy_kwargs"] == {"net_arch": [8], "optimizer_kwargs": {"fused": True}}
    own = {"device": "cuda", "policy_kwargs": {"optimizer_kwargs": {"eps": 1e-5}}}
    assert fused_adam(own) == own
    model = MultiTaskSAC("MlpPolicy", env, combiner="mean", **small())
    for optimizer in (model.actor.optimizer, model.critic.optimizer, model.ent_coef_optimizer):
        assert optimizer.defaults["fused"] is True
