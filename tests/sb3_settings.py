"""Settings shared by the tests of mtrl_fair.sb3 (tests/sb3/): the tasks and tiny agent arguments."""

from __future__ import annotations

from typing import Any

TASKS = ["reach-v3", "drawer-close-v3"]


def small(**overrides: Any) -> dict[str, Any]:
    """Tiny settings, as a fresh dict each time: SB3 writes into the policy_kwargs it is given."""
    return {
        "policy_kwargs": {"net_arch": [32, 32]},
        "learning_starts": 50,
        "batch_size": 32,
        "device": "cpu",
        **overrides,
    }
