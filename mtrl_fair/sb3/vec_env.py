"""Meta-World as an SB3 ``VecEnv``: one sub-env per task, the one-hot task id at the end of each observation.

The replay buffer of an SB3 vec env keeps one column per sub-env, and :func:`make_vec_env` has one
sub-env per task, so column ``k`` holds task ``k``'s transitions (what
:func:`mtrl_fair.sb3.recipe.sample_per_task` relies on).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from mtrl_fair.envs import final_observations, make_vector_env, resolve_tasks


class MetaWorldVecEnv(VecEnv):
    """A gymnasium vector env of Meta-World tasks behind SB3's ``VecEnv`` interface.

    SB3's conventions: ``step`` returns ``(obs, rewards, dones, infos)`` with one info dict per
    task; when an episode ends the returned observation is the next episode's first one, and the
    info holds ``terminal_observation``, ``TimeLimit.truncated``, ``episode`` (return, length, time,
    as SB3's ``Monitor`` writes it) and ``is_success`` (``info["success"]`` was ever 1).
    """

    def __init__(
        self, env: gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv, task_names: Sequence[str]
    ) -> None:
        self.env = env  # before VecEnv.__init__, which reads render_mode through get_attr
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.task_names = list(task_names)
        self._actions: np.ndarray | None = None
        self._success = np.zeros(self.num_envs, dtype=bool)
        self._return = np.zeros(self.num_envs)
        self._length = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._success[:], self._return[:], self._length[:] = False, 0.0, 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None, "step_async must come before step_wait"
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        success = np.asarray(info.get("success", np.zeros(self.num_envs)), dtype=float)
        if dones.any() and "final_info" in info:
            final_success = np.asarray(
                info["final_info"].get("success", np.zeros(self.num_envs)), dtype=float
            )
            success = np.where(dones, final_success, success)
        self._success |= success >= 1.0
        self._return += reward
        self._length += 1
        last_obs = final_observations(obs, dones, info) if dones.any() else obs
        infos: list[dict[str, Any]] = []
        for k in range(self.num_envs):
            item: dict[str, Any] = {"success": float(success[k])}
            if dones[k]:
                item["terminal_observation"] = last_obs[k]
                item["TimeLimit.truncated"] = bool(truncated[k] and not terminated[k])
                item["episode"] = {
                    "r": float(self._return[k]),
                    "l": int(self._length[k]),
                    "t": round(time.time() - self._start, 6),
                }
                item["is_success"] = bool(self._success[k])
                self._success[k], self._return[k], self._length[k] = False, 0.0, 0
            infos.append(item)
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        values = self.env.get_attr(attr_name)
        return [values[i] for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        current = list(self.env.get_attr(attr_name))
        for i in self._indices(indices):
            current[i] = value
        self.env.set_attr(attr_name, current)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        results = self.env.call(method_name, *method_args, **method_kwargs)
        return [results[i] for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        # The episode statistics SB3's Monitor would add are already in the infos (see above).
        return [False for _ in self._indices(indices)]


def make_vec_env(
    benchmark: str = "MT10",
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    *,
    vector_strategy: str = "auto",
    max_episode_steps: int = 500,
) -> MetaWorldVecEnv:
    """Meta-World MT10/MT50 (or a subset of its tasks) as an SB3 ``VecEnv``, one sub-env per task.

    Observations are Meta-World's 39 values followed by the one-hot task id, as for
    :func:`mtrl_fair.envs.make_vector_env`, so :func:`mtrl_fair.evaluate` scores the SB3 models
    trained on it. ``vector_strategy="auto"`` steps each task in its own process where a GPU is
    present and there are cores for it (:func:`mtrl_fair.envs.resolve_vector_strategy`).
    """
    task_names = resolve_tasks(benchmark, tasks)
    env = make_vector_env(
        benchmark, task_names, seed=seed, vector_strategy=vector_strategy, max_episode_steps=max_episode_steps
    )
    vec_env = MetaWorldVecEnv(env, task_names)
    vec_env.seed(seed)
    return vec_env
