"""What the multi-task SB3 agents (:class:`~mtrl_fair.sb3.sac.MultiTaskSAC`,
:class:`~mtrl_fair.sb3.td3.MultiTaskTD3`) share: their combiners, argument checks and plumbing.

:class:`CombinerSet` holds one combiner per loss; :func:`combiner_settings` checks the combiner
arguments; :func:`check_one_hot` checks, on the first update, that the one-hot task id at the end of
each observation (Meta-World's ``OneHotWrapper`` layout) matches the buffer column it was sampled
from, so a mismatched env is an error, not a silent mix-up; :func:`record_per_task` logs one value
per task; :func:`fused_adam` makes the policy's optimizers fused Adam.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtrl_fair.combiners import Combiner, make


class CombinerSet:
    """One combiner per loss (stateful ones keep separate state), saved through SB3's state dicts."""

    def __init__(self, name: str, kwargs: dict[str, Any] | None, groups: Sequence[str]) -> None:
        base = make(name, **(kwargs or {}))
        self.combiners = {group: copy.deepcopy(base) for group in groups}

    def __getitem__(self, group: str) -> Combiner:
        return self.combiners[group]

    def state_dict(self) -> dict[str, Any]:
        return {group: combiner.state_dict() for group, combiner in self.combiners.items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        for group, combiner in self.combiners.items():
            combiner.load_state_dict(state.get(group, {}) if not strict else state[group])

    def __repr__(self) -> str:
        return repr(next(iter(self.combiners.values())))


def combiner_settings(
    combiner: str, combiner_kwargs: dict[str, Any] | None, combine: Sequence[str], groups: Sequence[str]
) -> tuple[str, dict[str, Any], list[str]]:
    """Check the combiner arguments of a multi-task SB3 agent now, with one clear error."""
    if not isinstance(combiner, str):
        raise ValueError(
            "combiner must be a registry name (so that save/load can rebuild it), e.g. 'fairgrad'"
        )
    unknown = [name for name in combine if name not in groups]
    if unknown:
        raise ValueError(f"combine lists unknown losses {unknown}; allowed: {', '.join(groups)}")
    make(combiner, **(combiner_kwargs or {}))
    return combiner, dict(combiner_kwargs or {}), list(combine)


def task_names(env: Any, num_tasks: int) -> list[str]:
    return list(getattr(env, "task_names", [f"task-{k}" for k in range(num_tasks)]))


def record_per_task(logger: Any, prefix: str, values: Tensor, task_names: Sequence[str]) -> None:
    for name, value in zip(task_names, values.detach().float().cpu().tolist(), strict=True):
        logger.record(f"{prefix}/{name}", value)


def check_one_hot(observations: Tensor, num_tasks: int) -> bool:
    """Column k of the buffer must be task k: its observations end with the one-hot id ``e_k``."""
    one_hot = observations[..., -num_tasks:]
    expected = torch.eye(num_tasks, device=one_hot.device)[:, None, :].expand_as(one_hot)
    if not torch.equal(one_hot, expected):
        raise ValueError(
            "the observations of sub-env k must end with the one-hot id of task k (as make_vec_env builds "
            "them); this env's do not, so per-task losses cannot be formed"
        )
    return True


def fused_adam(kwargs: dict[str, Any]) -> dict[str, Any]:
    """SB3's keyword arguments with fused Adam for the policy's optimizers, as our own agent uses.

    The same Adam, in one kernel per optimizer step instead of several per parameter: the update is
    launch-bound on a GPU. A ``policy_kwargs`` that names its own optimizer or its arguments is
    left as it is.
    """
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    if "optimizer_class" in policy_kwargs or "optimizer_kwargs" in policy_kwargs:
        return kwargs
    policy_kwargs["optimizer_kwargs"] = {"fused": True}
    return {**kwargs, "policy_kwargs": policy_kwargs}
