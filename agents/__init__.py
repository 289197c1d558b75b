"""Multi-task SAC: networks, replay buffer, update maths and the SB3-style agent.

>>> from mtrl_fair.agents import MTSAC, MTSACConfig
>>> agent = MTSAC(env, combiner="fairgrad", combiner_kwargs={"alpha": 2.0})
>>> agent.learn(total_timesteps=100_000)

One module per concept: :mod:`~mtrl_fair.agents.config` (hyperparameters),
:mod:`~mtrl_fair.agents.networks`, :mod:`~mtrl_fair.agents.sac_losses` (pure loss functions),
:mod:`~mtrl_fair.agents.buffer`, :mod:`~mtrl_fair.agents.numerics` (skipped non-finite updates),
:mod:`~mtrl_fair.agents.cuda_graph`, :mod:`~mtrl_fair.agents.checkpoint` (crash-safe files) and
:mod:`~mtrl_fair.agents.mtsac` (the agent and its training loop).
"""

from mtrl_fair.agents.buffer import MultiTaskReplayBuffer, TaskBatch
from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtrl_fair.agents.config import LOSS_GROUPS, MTSACConfig
from mtrl_fair.agents.device import resolve_device
from mtrl_fair.agents.mtsac import MTSAC
from mtrl_fair.agents.numerics import NonFiniteUpdateError
from mtrl_fair.agents.stats import StepResult, UpdateStats

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
