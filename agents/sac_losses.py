"""The update maths of multi-task SAC as pure functions of tensors.

Every loss here keeps the task dimension: called on a ``(K, B, ...)`` batch it returns ``(K,)``
task losses, and called on one task's ``(B, ...)`` slice it returns that task's scalar loss. The
same function therefore serves the plain update (``losses.mean().backward()``) and the per-task
gradients of the combined update (``torch.func.vmap`` over the task dimension), so the two can never
drift apart. Parameters are passed explicitly (``torch.func.functional_call``) for the same reason;
``None`` stands for the module's own parameters, called directly, which skips ``functional_call``'s
Python overhead where no other parameters are needed (the plain mean path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.agents.networks import squashed_gaussian

__all__ = ["actor_losses", "critic_losses", "polyak_update", "soft_q_target", "temperature_losses"]


def _apply(module: nn.Module, params: Mapping[str, Tensor] | None, *inputs: Tensor) -> Any:
    """``module(*inputs)`` with ``params`` in place of its own (``None``: its own)."""
    if params is None:
        return module(*inputs)
    return functional_call(module, dict(params), inputs)


def soft_q_target(
    actor: nn.Module,
    target_critic: nn.Module,
    reward: Tensor,
    next_obs: Tensor,
    terminated: Tensor,
    noise: Tensor,
    alpha: Tensor,
    gamma: float,
) -> Tensor:
    """The soft Bellman target ``r + γ (1 − terminated) (min Q'(s', a') − α log π(a'|s'))``.

    ``alpha`` has shape ``(K, 1)`` (one temperature per task, broadcast over the batch). Only real
    terminations stop the bootstrap: a time-limit truncation is not an end of the task.
    """
    with torch.no_grad():
        mean, log_std = actor(next_obs)
        next_action, next_log_prob = squashed_gaussian(mean, log_std, noise)
        next_q = target_critic(next_obs, next_action).amin(dim=0)
        return reward + gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)


def critic_losses(
    critic: nn.Module, params: Mapping[str, Tensor] | None, obs: Tensor, action: Tensor, target: Tensor
) -> Tensor:
    """Per-task critic loss: ``½ Σ_members mean_batch (Q_m(s, a) − target)²`` (as in SB3's SAC).

    ``critic(obs, action)`` returns the ensemble's Q-values stacked first: ``(members, ..., B)``.
    """
    q = _apply(critic, params, obs, action)  # (members, ..., B)
    return 0.5 * (q - target).square().mean(dim=-1).sum(dim=0)


def actor_losses(
    actor: nn.Module,
    params: Mapping[str, Tensor] | None,
    critic: nn.Module,
    critic_params: Mapping[str, Tensor] | None,
    obs: Tensor,
    noise: Tensor,
    alpha: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-task actor loss ``mean_batch(α log π(a|s) − min Q(s, a))`` with ``a ~ π(·|s)``.

    ``critic_params`` should be detached: the actor update must not move the critic (with ``None``,
    restrict the backward pass to the actor's parameters instead, ``backward(inputs=...)``). ``alpha`` is
    ``(K, 1)`` on a ``(K, B, ...)`` batch, or ``(1,)`` on one task's slice. Returns the losses and
    the mean log-probability per task, which is all the temperature loss needs.
    """
    mean, log_std = _apply(actor, params, obs)
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    q = _apply(critic, critic_params, obs, action).amin(dim=0)
    return (alpha * log_prob - q).mean(dim=-1), log_prob.mean(dim=-1).detach()


def temperature_losses(log_alpha: Tensor, mean_log_prob: Tensor, target_entropy: float) -> Tensor:
    """Per-task temperature loss ``−log α_k (mean log π_k + target entropy)``, shape ``(K,)``.

    ``log_alpha`` is ``(K,)`` (one temperature per task) or ``(1,)`` (shared, broadcast).
    """
    return -(log_alpha * (mean_log_prob + target_entropy))


@torch.no_grad()
def polyak_update(params: Iterable[Tensor], target_params: Iterable[Tensor], tau: float) -> None:
    """``target ← (1 − τ) target + τ param``, as one fused foreach kernel per dtype."""
    torch._foreach_lerp_(list(target_params), list(params), tau)
