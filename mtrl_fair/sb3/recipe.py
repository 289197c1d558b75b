"""The recipe that puts a gradient combiner into any SB3 off-policy algorithm.

Two helpers: :func:`sample_per_task` (an equal number of transitions from every task, laid out
``(K, B, ...)``) and :func:`combined_backward` (per-task gradients of a per-task loss function →
combined ``.grad``); :class:`mtrl_fair.sb3.td3.MultiTaskTD3` is TD3 written that way.

How tasks are told apart: the replay buffer of an SB3 vec env keeps one column per sub-env, and
:func:`mtrl_fair.sb3.vec_env.make_vec_env` has one sub-env per task, so column ``k`` holds task
``k``'s transitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import Tensor, nn
from torch.func import vmap

from mtrl_fair.combiners import Combiner
from mtrl_fair.combiners.base import uses_after_step
from mtrl_fair.jacobian import CombinedGradient, backward_per_task_func


def sample_per_task(
    replay_buffer: ReplayBuffer, batch_per_task: int, num_tasks: int | None = None
) -> ReplayBufferSamples:
    """``batch_per_task`` transitions from every sub-env column of an SB3 replay buffer.

    Every field of the result has shape ``(K, batch_per_task, ...)`` (rewards and dones
    ``(K, batch_per_task, 1)``), ready for :func:`combined_backward`. With :func:`make_vec_env`
    column ``k`` is task ``k``.
    """
    num_envs = replay_buffer.n_envs
    if num_tasks is not None and num_tasks != num_envs:
        raise ValueError(
            f"per-task sampling needs one sub-env per task: the buffer has {num_envs} sub-envs for {num_tasks} tasks"
        )
    if replay_buffer.optimize_memory_usage:
        raise ValueError("per-task sampling does not support optimize_memory_usage=True")
    filled = replay_buffer.buffer_size if replay_buffer.full else replay_buffer.pos
    if filled == 0:
        raise RuntimeError("cannot sample from an empty replay buffer")
    # SB3 seeds numpy's global generator (set_random_seed) and samples from it: so do we.
    rows = np.random.randint(0, filled, size=(num_envs, batch_per_task))  # noqa: NPY002
    columns = np.broadcast_to(np.arange(num_envs)[:, None], rows.shape)

    def take(array: np.ndarray) -> Tensor:
        return replay_buffer.to_torch(
            np.ascontiguousarray(array[rows, columns]).astype(np.float32, copy=False)
        )

    # Only real terminations stop bootstrapping (time-limit truncations are flagged in timeouts).
    dones = replay_buffer.dones[rows, columns] * (1.0 - replay_buffer.timeouts[rows, columns])
    return ReplayBufferSamples(
        observations=take(replay_buffer.observations),
        actions=take(replay_buffer.actions),
        next_observations=take(replay_buffer.next_observations),
        dones=replay_buffer.to_torch(dones[..., None].astype(np.float32)),
        rewards=replay_buffer.to_torch(replay_buffer.rewards[rows, columns][..., None].astype(np.float32)),
    )


def combined_backward(
    loss_fn: Callable[[dict[str, Tensor], Any], Tensor],
    module: nn.Module,
    task_batch: Any,
    combiner: Combiner,
    *,
    diagnostics: bool = False,
    batched_loss: Callable[[], Tensor] | None = None,
) -> CombinedGradient:
    """Write the combined per-task gradient of ``module``'s parameters into their ``.grad``.

    ``loss_fn(params, one_task_batch)`` is one task's loss, computed with
    ``torch.func.functional_call(module, params, ...)``; ``task_batch`` has the task dimension
    first (e.g. from :func:`sample_per_task`). Call ``optimizer.step()`` afterwards. The ``mean``
    combiner gives exactly the gradient of the mean of the task losses (and takes that shortcut:
    one backward pass instead of per-task gradients, unless ``diagnostics`` asks for them).

    ``batched_loss()``, optional, returns the same loss for every task at once, ``(K,)``, computed
    with ``module`` itself on the whole batch, its rows ordered task-major. The ``mean`` shortcut
    then uses it instead of ``vmap(loss_fn)``, and when every parameter of ``module`` belongs to a
    linear layer (SB3's MLP policies) so do the per-task gradients: one backward pass, with the
    weight gradients as products batched over tasks (:mod:`mtrl_fair.layer_jacobian`), which saves
    vmap's Python overhead (most of a small update's time on a GPU).
    """
    return backward_per_task_func(
        loss_fn,
        dict(module.named_parameters()),
        task_batch,
        combiner,
        diagnostics=diagnostics,
        randomness="error",
        batched_loss=batched_loss,
        module=module,
    )


def after_step(
    combiner: Combiner,
    loss_fn: Callable[[dict[str, Tensor], Any], Tensor],
    params: Mapping[str, Tensor],
    task_batch: Any,
) -> None:
    """Stateful combiners (FAMO) learn from the task losses re-evaluated on the same batch after the step."""
    if not uses_after_step(combiner):
        return
    with torch.no_grad():
        combiner.after_step(vmap(loss_fn, in_dims=(None, 0), randomness="error")(dict(params), task_batch))
