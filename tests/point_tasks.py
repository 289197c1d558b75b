"""A tiny multi-task vector env for agent tests: K point-reaching tasks with one-hot task ids."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import torch

from mtrl_fair.agents import MTSAC

K = 3
STATE_DIM = 5


class PointTask(gym.Env):
    """Move a point towards task ``k``'s goal; episodes end by truncation after 7 steps."""

    def __init__(self, task: int) -> None:
        self.task = task
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (STATE_DIM + K,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.array([np.cos(task), np.sin(task)])
        self.steps, self.position = 0, np.zeros(2)
        self.stepped_by: set[str] = set()

    def _obs(self) -> np.ndarray:
        state = np.concatenate([self.position, self.goal, [self.steps / 7]])
        return np.concatenate([state, np.eye(K)[self.task]])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.steps, self.position = 0, self.np_random.uniform(-1, 1, 2)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.stepped_by.add(threading.current_thread().name)
        self.steps += 1
        self.position = self.position + 0.1 * np.asarray(action, dtype=np.float64)
        reward = -float(np.linalg.norm(self.position - self.goal))
        return self._obs(), reward, False, self.steps >= 7, {}


def make_env() -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda k=k: PointTask(k) for k in range(K)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def params(agent: MTSAC) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*agent.actor.parameters(), *agent.critic.parameters()]]
