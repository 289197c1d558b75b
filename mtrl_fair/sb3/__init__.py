"""Gradient combiners inside Stable-Baselines3 agents, and Meta-World as an SB3 ``VecEnv``.

``MultiTaskSAC("MlpPolicy", make_vec_env("MT10"), combiner="fairgrad")`` is SB3's SAC whose
``train()`` keeps the critic and actor losses per task and sends their per-task gradients through a
combiner (:mod:`mtrl_fair.combiners`) before each optimiser step, with the same per-task Jacobian
code as :class:`mtrl_fair.agents.MTSAC` (:mod:`mtrl_fair.jacobian`). Everything else is SB3's:
``learn``, ``predict``, callbacks, the logger, ``save`` / ``load``.

Any other off-policy algorithm gets the same treatment in a few lines with the two helpers
:func:`sample_per_task` (an equal number of transitions from every task, laid out ``(K, B, ...)``)
and :func:`combined_backward` (per-task gradients of a per-task loss function → combined ``.grad``);
:class:`MultiTaskTD3` is TD3 written that way.

How tasks are told apart: the replay buffer of an SB3 vec env keeps one column per sub-env, and
:func:`make_vec_env` has one sub-env per task, so column ``k`` holds task ``k``'s transitions. The
one-hot task id at the end of each observation (Meta-World's ``OneHotWrapper`` layout) is checked
against that on the first update, so a mismatched env is an error, not a silent mix-up.

Modules, each importing only those above it:

- :mod:`~mtrl_fair.sb3.vec_env`: :class:`MetaWorldVecEnv` and :func:`make_vec_env`.
- :mod:`~mtrl_fair.sb3.recipe`: :func:`sample_per_task` and :func:`combined_backward`.
- :mod:`~mtrl_fair.sb3.combiner_set`: what both agents share (:class:`CombinerSet`, argument
  checks, the one-hot check, per-task logging, fused Adam).
- :mod:`~mtrl_fair.sb3.sac`: :class:`MultiTaskSAC` (and its departures from SB3's SAC).
- :mod:`~mtrl_fair.sb3.td3`: :class:`MultiTaskTD3`.
"""

from __future__ import annotations

from mtrl_fair.sb3.combiner_set import CombinerSet
from mtrl_fair.sb3.recipe import combined_backward, sample_per_task
from mtrl_fair.sb3.sac import MultiTaskSAC
from mtrl_fair.sb3.td3 import MultiTaskTD3
from mtrl_fair.sb3.vec_env import MetaWorldVecEnv, make_vec_env

__all__ = [
    "CombinerSet",
    "MetaWorldVecEnv",
    "MultiTaskSAC",
    "MultiTaskTD3",
    "combined_backward",
    "make_vec_env",
    "sample_per_task",
]
