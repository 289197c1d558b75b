"""The replay buffers of R packed runs, stacked: ``(R, K, capacity, ...)`` on the training device.

Each run fills its own slots, exactly as its solo :class:`~mtrl_fair.agents.buffer.MultiTaskReplayBuffer`
would, and samples with its own generator, so the indices a run draws are those it draws alone;
the R runs' transitions are then gathered with one indexing operation per field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl_fair.agents.buffer import TaskBatch

__all__ = ["PackedReplayBuffer"]

_FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class PackedReplayBuffer:
    """R runs' ring buffers of ``capacity_per_task`` transitions for each of ``num_tasks`` tasks."""

    def __init__(
        self, runs: int, num_tasks: int, capacity_per_task: int, obs_dim: int, action_dim: int, device: torch.device
    ) -> None:
        if capacity_per_task < 1:
            raise ValueError(f"the replay buffer needs capacity_per_task >= 1, got {capacity_per_task}")
        self.runs, self.num_tasks, self.capacity_per_task = runs, num_tasks, capacity_per_task
        self.device = torch.device(device)
        shape = (runs, num_tasks, capacity_per_task)
        self.storage: dict[str, Tensor] = {
            "obs": torch.empty(*shape, obs_dim, device=self.device),
            "action": torch.empty(*shape, action_dim, device=self.device),
            "reward": torch.empty(*shape, device=self.device),
            "next_obs": torch.empty(*shape, obs_dim, device=self.device),
            "terminated": torch.empty(*shape, device=self.device),
        }
        self.position = 0
        self.size = 0
        self._run_index = torch.arange(runs, device=self.device).view(runs, 1, 1)
        self._task_index = torch.arange(num_tasks, device=self.device).view(1, num_tasks, 1)

    def add(self, **fields: np.ndarray) -> None:
        """Store one transition per run and task; every field has the run, then the task first."""
        for key in _FIELDS:
            tensor = torch.as_tensor(fields[key], dtype=torch.float32)
            target = self.storage[key][:, :, self.position]
            target.copy_(tensor.reshape(target.shape), non_blocking=True)
        self.position = (self.position + 1) % self.capacity_per_task
        self.size = min(self.size + 1, self.capacity_per_task)

    def sample(self, batch_per_task: int, generators: Sequence[torch.Generator]) -> TaskBatch:
        """``batch_per_task`` transitions of each run and task, each run drawing with its own generator."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.stack(
            [
                torch.randint(0, self.size, (self.num_tasks, batch_per_task), device=self.device, generator=g)
                for g in generators
            ]
        )
        return TaskBatch(
            **{key: value[self._run_index, self._task_index, index] for key, value in self.storage.items()}
        )

    def member_state_dict(self, run: int) -> dict[str, Any]:
        """Run ``run``'s buffer in the format of :meth:`MultiTaskReplayBuffer.state_dict`."""
        return {
            **{key: value[run, :, : self.size].cpu().clone() for key, value in self.storage.items()},
            "position": self.position,
            "size": self.size,
        }

    def load_member_state_dict(self, run: int, state: dict[str, Any]) -> None:
        """Restore run ``run``'s buffer from what :meth:`member_state_dict` (or a solo buffer) saved.

        The runs of a pack advance together, so every run must have saved the same fill level.
        """
        size = int(state["size"])
        if size > self.capacity_per_task:
            raise ValueError(
                f"the saved replay buffer holds {size} transitions per task, more than this "
                f"buffer's capacity_per_task={self.capacity_per_task}"
            )
        for key, value in self.storage.items():
            saved = state[key]
            expected = (self.num_tasks, size, *value.shape[3:])
            if tuple(saved.shape) != expected:
                raise ValueError(f"the saved replay buffer's {key!r} has shape {tuple(saved.shape)}, expected {expected}")
            value[run, :, :size].copy_(saved)
        self.size = size
        self.position = int(state["position"]) % self.capacity_per_task
