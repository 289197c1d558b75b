"""Small MTSAC agents for the tests under ``tests/agents/``, built without an environment.

Agents are built from ``num_tasks``, ``observation_space`` and ``action_space``, and their replay
buffers filled with random transitions whose observations end with the one-hot task id, as
Meta-World's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Box

from mtrl_fair.agents import MTSAC, MTSACConfig

K = 3
STATE_DIM = 6
OBS_DIM = STATE_DIM + K
ACTION_DIM = 4
BATCH = 8


def small_config(**overrides: Any) -> MTSACConfig:
    values: dict[str, Any] = {
        "hidden_sizes": [32, 32],
        "batch_size_per_task": BATCH,
        "buffer_size_per_task": 64,
        "warmup_steps": 0,
    }
    values.update(overrides)
    return MTSACConfig(**values)


def make_agent(
    combiner: Any = "mean",
    *,
    seed: int = 0,
    num_tasks: int = K,
    action_space: Box | None = None,
    device: str = "cpu",
    combiner_kwargs: dict[str, Any] | None = None,
    **config: Any,
) -> MTSAC:
    return MTSAC(
        num_tasks=num_tasks,
        observation_space=Box(-np.inf, np.inf, (STATE_DIM + num_tasks,), np.float64),
        action_space=action_space if action_space is not None else Box(-1.0, 1.0, (ACTION_DIM,), np.float32),
        device=device,
        seed=seed,
        config=small_config(**config),
        combiner=combiner,
        combiner_kwargs=combiner_kwargs,
    )


def one_hot_obs(rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    return np.concatenate([rng.normal(size=(num_tasks, STATE_DIM)), np.eye(num_tasks)], axis=1)


def fill(agent: MTSAC, transitions: int = 32, seed: int = 0) -> MTSAC:
    """Random transitions, one per task per step, in the agent's replay buffer."""
    rng = np.random.default_rng(seed)
    num_tasks = agent.num_tasks
    for _ in range(transitions):
        agent.replay_buffer.add(
            one_hot_obs(rng, num_tasks),
            rng.uniform(-1.0, 1.0, size=(num_tasks, agent.action_dim)),
            rng.normal(size=num_tasks),
            one_hot_obs(rng, num_tasks),
            rng.random(num_tasks) < 0.1,
        )
    return agent
