"""Policies with known outcomes, with stable-baselines3's ``predict``: Meta-World's scripted experts
(they solve reach-v3 and drawer-close-v3 in every episode) and a policy that never moves."""

from __future__ import annotations

import numpy as np
from metaworld.policies import SawyerDrawerCloseV3Policy, SawyerReachV3Policy
from metaworld.policies.policy import Policy

OBS_SIZE = 39
EXPERT_TASKS = ["reach-v3", "drawer-close-v3"]
EXPERTS: dict[str, type[Policy]] = {
    "reach-v3": SawyerReachV3Policy,
    "drawer-close-v3": SawyerDrawerCloseV3Policy,
}


class ScriptedExperts:
    """Meta-World's scripted expert of each row's task, chosen by the one-hot id; SB3's predict."""

    def __init__(self, tasks: list[str]) -> None:
        self.experts = [EXPERTS[task]() for task in tasks]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        actions = [
            self.experts[int(np.argmax(row[OBS_SIZE:]))].get_action(row[:OBS_SIZE].astype(np.float64))
            for row in obs
        ]
        return np.stack(actions), None


class ZeroActions:
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.zeros((obs.shape[0], 4), dtype=np.float32), None
