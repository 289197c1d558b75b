"""mtrl_fair.sb3.vec_env: Meta-World as an SB3 VecEnv."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from sb3_settings import TASKS

from mtrl_fair.sb3.vec_env import MetaWorldVecEnv, make_vec_env


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
