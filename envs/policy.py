"""What the evaluation needs from a policy: stable-baselines3's ``predict``, and its actions checked."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["ACTION_SIZE", "PredictPolicy", "check_policy", "deterministic_actions"]

ACTION_SIZE = 4
"""Meta-World's action: 3 end-effector deltas and the gripper effort."""


class PredictPolicy(Protocol):
    """What :func:`~mtrl_fair.envs.evaluate` needs from a policy: stable-baselines3's ``predict``."""

    def predict(self, observation: np.ndarray, *, deterministic: bool = ...) -> tuple[Any, Any]: ...


def check_policy(policy: Any) -> None:
    """Raise ``ValueError`` unless ``policy`` has a callable ``predict``."""
    if not callable(getattr(policy, "predict", None)):
        raise ValueError(
            f"policy must have a callable predict(obs, deterministic=True), as stable-baselines3 models "
            f"do; got {type(policy).__name__}"
        )


def deterministic_actions(policy: PredictPolicy, observations: np.ndarray) -> np.ndarray:
    """``policy.predict(observations, deterministic=True)``'s actions, checked to be ``(K, 4)``."""
    actions, _ = policy.predict(observations, deterministic=True)
    actions = np.asarray(actions)
    expected = (observations.shape[0], ACTION_SIZE)
    if actions.shape != expected:
        raise ValueError(f"policy.predict returned actions of shape {actions.shape}, expected {expected}")
    return actions
