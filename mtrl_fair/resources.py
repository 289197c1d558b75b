"""What a run needs from the machine, said before it starts: replay-buffer memory and checkpoint disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mtrl_fair.agents import MTSAC
from mtrl_fair.config import TrainConfig

__all__ = ["checkpoint_bytes", "replay_buffer_bytes", "resource_warnings", "tensor_bytes"]


# Meta-World's observation: 39 state values, then the one-hot task id.
_METAWORLD_STATE_DIM = 39


def replay_buffer_bytes(num_tasks: int, capacity_per_task: int, action_dim: int = 4) -> int:
    """Bytes of a full replay buffer: float32 obs, next obs, action, reward and termination."""
    obs_dim = _METAWORLD_STATE_DIM + num_tasks
    return 4 * num_tasks * capacity_per_task * (2 * obs_dim + action_dim + 2)


def checkpoint_bytes(agent: MTSAC) -> int:
    """Bytes of a checkpoint of ``agent`` once its replay buffer is full: every tensor it saves."""
    buffer = sum(t.numel() * t.element_size() for t in agent.replay_buffer.storage.values())
    return buffer + tensor_bytes(agent.state_dict(include_replay_buffer=False))


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in ``value`` (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _free_host_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # not a POSIX system that reports it


def resource_warnings(
    cfg: TrainConfig,
    num_tasks: int,
    device: torch.device,
    run_dir: Path,
    *,
    free_device_bytes: int | None = None,
    free_disk_bytes: int | None = None,
) -> list[str]:
    """What will not fit, said before the run starts: the replay buffer in the training device's
    free memory, and the checkpoints (each holds the buffer) on the run directory's disk."""
    capacity = cfg.agent.buffer_size_per_task
    needed = replay_buffer_bytes(num_tasks, capacity)
    if free_device_bytes is None:
        free_device_bytes = (
            torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_host_memory()
        )
    if free_disk_bytes is None:
        free_disk_bytes = shutil.disk_usage(run_dir).free
    warnings = []
    gib = 2**30
    if free_device_bytes is not None and needed > free_device_bytes:
        fits = max(1, capacity * free_device_bytes // (2 * needed))
        warnings.append(
            f"a full replay buffer takes {needed / gib:.1f} GiB but {device} has {free_device_bytes / gib:.1f} GiB "
            f"free; lower agent.buffer_size_per_task (e.g. {fits}) or train on another device"
        )
    on_disk = needed * (cfg.keep_checkpoints + 1)  # the kept ones plus the one being written
    if needed > 0 and on_disk > free_disk_bytes:
        warnings.append(
            f"{cfg.keep_checkpoints + 1} checkpoints with a full replay buffer take {on_disk / gib:.1f} GiB but the "
            f"disk of {run_dir} has {free_disk_bytes / gib:.1f} GiB free; lower agent.buffer_size_per_task or "
            "keep_checkpoints, or choose another hydra.run.dir"
        )
    return warnings
