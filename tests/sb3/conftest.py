"""The Meta-World vec env the tests of mtrl_fair.sb3 share (one per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sb3_settings import TASKS

from mtrl_fair.sb3.vec_env import MetaWorldVecEnv, make_vec_env


@pytest.fixture(scope="module")
def env() -> Iterator[MetaWorldVecEnv]:
    vec_env = make_vec_env("MT10", TASKS, seed=0, max_episode_steps=30)
    yield vec_env
    vec_env.close()
