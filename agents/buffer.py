"""A replay buffer with one slot per task, kept on the training device.

Each vector-env step brings one transition from every task, so the K per-task slots always hold the
same number of transitions and a single host-side counter describes them all: sampling needs no
read-back from the device. A batch holds the same number of samples from every task, laid out
``(K, B, ...)``, which is the layout the per-task losses and the combiner expect.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["MultiTaskReplayBuffer", "TaskBatch"]


class TaskBatch(NamedTuple):
    """``B`` transitions from each of ``K`` tasks; every field has shape ``(K, B, ...)``."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    """1.0 where the episode really ended (no bootstrapping), 0.0 otherwise (time-limit included)."""


class MultiTaskReplayBuffer:
    """A ring buffer of ``capacity_per_task`` transitions for each of ``num_tasks`` tasks."""

    def __init__(
        self,
        num_tasks: int,
        capacity_per_task: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if capacity_per_task < 1:
            raise ValueError(f"the replay buffer needs capacity_per_task >= 1, got {capacity_per_task}")
        self.num_tasks = num_tasks
        self.capacity_per_task = capacity_per_task
        self.device = torch.device(device)
        shape = (num_tasks, capacity_per_task)
        # torch.empty does not touch the memory: pages are committed only as the buffer fills.
        self.storage: dict[str, Tensor] = {
            "obs": torch.empty(*shape, obs_dim, device=self.device),
            "action": torch.empty(*shape, action_dim, device=self.device),
            "reward": torch.empty(*shape, device=self.device),
            "next_obs": torch.empty(*shape, obs_dim, device=self.device),
            "terminated": torch.empty(*shape, device=self.device),
        }
        self.position = 0
        self.size = 0
        self._task_index = torch.arange(num_tasks, device=self.device).unsqueeze(1)

    def __len__(self) -> int:
        """Transitions stored per task."""
        return self.size

    def add(
        self,
        obs: np.ndarray | Tensor,
        action: np.ndarray | Tensor,
        reward: np.ndarray | Tensor,
        next_obs: np.ndarray | Tensor,
        terminated: np.ndarray | Tensor,
    ) -> None:
        """Store one transition per task; every argument has the task dimension first."""
        values = {
            "obs": obs,
            "action": action,
            "reward": reward,
            "next_obs": next_obs,
            "terminated": terminated,
        }
        for key, value in values.items():
            tensor = torch.as_tensor(value, dtype=torch.float32)
            self.storage[key][:, self.position].copy_(
                tensor.reshape(self.storage[key][:, 0].shape), non_blocking=True
            )
        self.position = (self.position + 1) % self.capacity_per_task
        self.size = min(self.size + 1, self.capacity_per_task)

    def sample(self, batch_per_task: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``batch_per_task`` transitions drawn uniformly (with replacement) from each task's slot."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(
            0, self.size, (self.num_tasks, batch_per_task), device=self.device, generator=generator
        )
        return TaskBatch(**{key: value[self._task_index, index] for key, value in self.storage.items()})

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer (CPU tensors, loadable with ``weights_only=True``)."""
        return {
            # clone(): a slice would otherwise save the whole underlying storage, empty part included.
            **{key: value[:, : self.size].cpu().clone() for key, value in self.storage.items()},
            "position": self.position,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity_per_task:
            raise ValueError(
                f"the saved replay buffer holds {size} transitions per task, more than this "
                f"buffer's capacity_per_task={self.capacity_per_task}"
            )
        for key, value in self.storage.items():
            saved = state[key]
            if tuple(saved.shape) != (self.num_tasks, size, *value.shape[2:]):
                raise ValueError(
                    f"the saved replay buffer's {key!r} has shape {tuple(saved.shape)}, expected "
                    f"{(self.num_tasks, size, *value.shape[2:])}"
                )
            value[:, :size].copy_(saved)
        self.size = size
        self.position = int(state["position"]) % self.capacity_per_task
