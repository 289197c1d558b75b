"""What the agent reports: one update's measurements and one training iteration's outcome.

Both are named tuples of device tensors (:class:`UpdateStats`) or host arrays (:class:`StepResult`),
in the manner of Stable-Baselines3's ``type_aliases``: the update returns its statistics without
reading anything back from the device, and the loop reads them only when it logs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

__all__ = ["StepResult", "UpdateStats"]


class UpdateStats(NamedTuple):
    """What one update measured, as device tensors (read them back only when logging)."""

    critic_loss: Tensor
    """(K,) per-task critic losses."""
    actor_loss: Tensor
    """(K,) per-task actor losses."""
    temperature: Tensor
    """(K,) temperature of each task (equal entries when shared)."""
    critic_weights: Tensor
    """(K,) task weights the combiner gave the critic gradients (1/K when not combined)."""
    actor_weights: Tensor
    """(K,) task weights the combiner gave the actor gradients (1/K when not combined)."""
    critic_grad_norms: Tensor | None = None
    """(K,) norms of the per-task critic gradients (diagnostic updates only)."""
    critic_cosine: Tensor | None = None
    """Mean pairwise cosine between the task gradients of the critic (diagnostic updates only)."""
    actor_grad_norms: Tensor | None = None
    actor_cosine: Tensor | None = None
    finite: Tensor | None = None
    """0-d bool: False when a non-finite loss or gradient made the update skip its optimiser steps."""


class StepResult(NamedTuple):
    """One training iteration, as handed to a ``learn`` callback."""

    iteration: int
    """Iterations done, this one included."""
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any]
    stats: UpdateStats | None
    """``None`` during warm-up."""
