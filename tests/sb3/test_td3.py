"""mtrl_fair.sb3.td3: MultiTaskTD3, the recipe in another algorithm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sb3_settings import small

from mtrl_fair.sb3.td3 import MultiTaskTD3
from mtrl_fair.sb3.vec_env import MetaWorldVecEnv


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
