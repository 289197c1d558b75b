"""What a multi-task agent knows of its env: the tasks, the observation size and the action bounds.

An agent is built from a gymnasium vector env with one sub-env per task, or, to ``predict`` and
``update`` without one, from the task count and the per-task spaces. :class:`TaskSpaces` checks
them once, maps the policy's squashed actions in ``[-1, 1]`` to the env's bounds and back, and
round-trips through the plain values saved in a checkpoint's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TaskSpaces"]


@dataclass(frozen=True)
class TaskSpaces:
    """K tasks with flat ``Box`` observations of ``obs_dim`` values and bounded ``Box`` actions."""

    task_names: tuple[str, ...]
    obs_dim: int
    action_low: np.ndarray
    """float32 lower bounds of the action, one per action dimension."""
    action_high: np.ndarray

    @classmethod
    def from_spaces(
        cls, num_tasks: int, observation_space: Any, action_space: Any, task_names: Sequence[str] | None = None
    ) -> TaskSpaces:
        """Check the per-task spaces (flat, actions bounded) and name the tasks (``task-<k>`` by default)."""
        if len(observation_space.shape) != 1 or len(action_space.shape) != 1:
            raise ValueError(
                f"MTSAC needs flat Box spaces, got observation shape {observation_space.shape} and "
                f"action shape {action_space.shape}"
            )
        names = tuple(task_names) if task_names is not None else tuple(f"task-{k}" for k in range(num_tasks))
        if len(names) != num_tasks:
            raise ValueError(f"got {len(names)} task names for {num_tasks} tasks")
        low = np.asarray(action_space.low, dtype=np.float32)
        high = np.asarray(action_space.high, dtype=np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("MTSAC needs a bounded action space (finite low and high)")
        return cls(names, int(observation_space.shape[0]), low, high)

    @classmethod
    def from_env(cls, env: Any, task_names: Sequence[str] | None = None) -> TaskSpaces:
        """From a vector env with one sub-env per task (its ``task_names`` attribute, if any, names them)."""
        if task_names is None and hasattr(env, "task_names"):
            task_names = list(env.task_names)
        return cls.from_spaces(env.num_envs, env.single_observation_space, env.single_action_space, task_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def observation_space(self) -> Any:
        from gymnasium.spaces import Box

        return Box(-np.inf, np.inf, (self.obs_dim,), np.float64)

    @property
    def action_space(self) -> Any:
        from gymnasium.spaces import Box

        return Box(self.action_low, self.action_high)

    def scale_action(self, squashed: np.ndarray) -> np.ndarray:
        """A squashed action in ``[-1, 1]`` → the env's bounds."""
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)

    def unscale_action(self, action: np.ndarray) -> np.ndarray:
        """An env action → ``[-1, 1]`` (what the replay buffer stores and the critic sees)."""
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    def check_env(self, env: Any) -> None:
        """Raise a one-line :class:`ValueError` unless ``env`` has these tasks' count and shapes."""
        expected = (self.num_tasks, (self.obs_dim,), (self.action_dim,))
        got = (env.num_envs, env.single_observation_space.shape, env.single_action_space.shape)
        if got != expected:
            raise ValueError(f"the env has (tasks, obs shape, action shape) = {got}, the saved agent {expected}")

    def metadata(self) -> dict[str, Any]:
        """Plain values for a checkpoint (the keys of the checkpoint format)."""
        return {
            "num_tasks": self.num_tasks,
            "obs_dim": self.obs_dim,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "task_names": list(self.task_names),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> TaskSpaces:
        names = tuple(str(name) for name in metadata["task_names"])
        if len(names) != int(metadata["num_tasks"]):
            raise ValueError(f"got {len(names)} task names for {metadata['num_tasks']} tasks")
        return cls(
            names,
            int(metadata["obs_dim"]),
            np.asarray(metadata["action_low"], np.float32),
            np.asarray(metadata["action_high"], np.float32),
        )
