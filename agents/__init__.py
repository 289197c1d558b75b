"""Multi-task SAC: networks, replay buffer, update maths and the SB3-style agent.

>>> from mtrl_fair.agents import MTSAC, MTSACConfig
>>> agent = MTSAC(env, combiner="fairgrad", combiner_kwargs={"alpha": 2.0})
>>> agent.learn(total_timesteps=100_000)
"""

from mtrl_fair.agents.buffer import MultiTaskReplayBuffer, TaskBatch
from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtrl_fair.agents.mtsac import (
    LOSS_GROUPS,
    MTSAC,
    MTSACConfig,
    NonFiniteUpdateError,
    StepResult,
    UpdateStats,
    resolve_device,
)

__all__ = [
    "LOSS_GROUPS",
    "MTSAC",
    "CheckpointError",
    "MTSACConfig",
    "MultiTaskReplayBuffer",
    "NonFiniteUpdateError",
    "StepResult",
    "TaskBatch",
    "UpdateStats",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
