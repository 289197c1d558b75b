"""One run's optimizer state out of a pack, and a pack's optimizer state out of its runs'.

A pack's fused Adam holds, for each stacked parameter, the moments of all its runs stacked the same
way (each run's slice contiguous). A run's share, reshaped to its solo parameter's shape, is exactly
the state its solo optimizer would hold, so a packed run's checkpoint is an ordinary one, and a pack
resumes from its runs' ordinary checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["member_optimizer_state", "stack_optimizer_states"]

# Per-parameter entries of Adam's state that are stacked like their parameter ("step" is shared).
_STACKED_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def member_optimizer_state(
    state: dict[str, Any], run: int, runs: int, solo_shapes: Sequence[torch.Size]
) -> dict[str, Any]:
    """Run ``run``'s share of a pack's optimizer ``state_dict()``, shaped as its solo optimizer's."""
    member: dict[str, Any] = {"state": {}, "param_groups": copy.deepcopy(state["param_groups"])}
    for index, entry in state["state"].items():
        member["state"][index] = {
            key: (
                value.reshape(runs, -1)[run].reshape(solo_shapes[index]).clone()
                if key in _STACKED_KEYS
                else value.clone() if torch.is_tensor(value) else value
            )
            for key, value in entry.items()
        }
    return member


def stack_optimizer_states(
    states: Sequence[dict[str, Any]], packed_shapes: Sequence[torch.Size]
) -> dict[str, Any]:
    """A pack's optimizer ``state_dict()`` from its runs' (in run order), for ``load_state_dict``.

    Raises:
        ValueError: when the runs' optimizers took different numbers of steps (they were not
            saved at the same iteration) or hold different parameters.
    """
    first = states[0]
    indices = list(first["state"])
    if any(list(state["state"]) != indices for state in states):
        raise ValueError("the runs' optimizer states hold different parameters")
    packed: dict[str, Any] = {"state": {}, "param_groups": copy.deepcopy(first["param_groups"])}
    for index in indices:
        entry: dict[str, Any] = {}
        for key, value in first["state"][index].items():
            values = [state["state"][index][key] for state in states]
            if key in _STACKED_KEYS:
                entry[key] = torch.cat([v.reshape(1, -1) for v in values]).reshape(packed_shapes[index])
            else:
                if any(not torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                    raise ValueError(f"the runs' optimizers differ in {key!r}: they were saved at other iterations")
                entry[key] = value
        packed["state"][index] = entry
    return packed
