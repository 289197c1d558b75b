"""One update of multi-task SAC: the critic, the actor and the temperature, then the target critic.

:class:`SACUpdate` holds references to the agent's networks, temperatures, optimizers and
combiners, and changes them in place; it never touches the env, the replay buffer or the disk. For
every loss named in ``config.combine``, the K task gradients of the shared parameters go through the
combiner (:mod:`mtrl_fair.jacobian`) before the optimiser step. Losses not combined, and every loss
when the combiner is ``mean``, take the plain ``losses.mean()`` gradient, which is the same maths
with one backward pass. The losses themselves are the pure functions of
:mod:`~mtrl_fair.agents.sac_losses`.

An update with a non-finite loss or gradient is skipped whole, on the device
(:mod:`~mtrl_fair.agents.numerics`). Nothing here reads back to the host, so the update can be
recorded as a CUDA graph (:mod:`~mtrl_fair.agents.cuda_graph`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from mtrl_fair.agents.buffer import TaskBatch
from mtrl_fair.agents.config import MTSACConfig
from mtrl_fair.agents.numerics import SkipCounter, guarded_step
from mtrl_fair.agents.sac_losses import (
    actor_losses,
    critic_losses,
    polyak_update,
    soft_q_target,
    temperature_losses,
)
from mtrl_fair.agents.stats import UpdateStats
from mtrl_fair.combiners import Combiner
from mtrl_fair.combiners.base import uses_after_step
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.jacobian import (
    CombinedGradient,
    backward_per_task_func,
    mean_pairwise_cosine,
    write_combined_grad,
)

__all__ = ["SACUpdate"]


class SACUpdate:
    """The update step of :class:`~mtrl_fair.agents.mtsac.MTSAC`, on the agent's own tensors.

    Args:
        config: the hyperparameters (``gamma``, ``tau``, ``combine``, ``chunk_size``, ...).
        actor, critic, critic_target: the networks (the critic's members stacked first).
        log_alpha: the log-temperatures, ``(K,)`` or ``(1,)`` when shared.
        actor_optimizer, critic_optimizer, temperature_optimizer: fused Adam optimizers; a
            non-finite step is dropped through their ``found_inf`` flag.
        combiners: one combiner per loss name (stateful ones keep separate state for each).
        num_tasks: K.
        net_obs_dim: how many leading observation values the networks see (the one-hot task id is
            dropped when ``use_task_id`` is off).
        action_dim: the size of an action.
        target_entropy: SAC's entropy target.
    """

    def __init__(
        self,
        *,
        config: MTSACConfig,
        actor: nn.Module,
        critic: nn.Module,
        critic_target: nn.Module,
        log_alpha: Tensor,
        actor_optimizer: torch.optim.Optimizer,
        critic_optimizer: torch.optim.Optimizer,
        temperature_optimizer: torch.optim.Optimizer,
        combiners: dict[str, Combiner],
        num_tasks: int,
        net_obs_dim: int,
        action_dim: int,
        target_entropy: float,
    ) -> None:
        self.config = config
        self.actor, self.critic, self.critic_target = actor, critic, critic_target
        self.log_alpha = log_alpha
        self.actor_optimizer = actor_optimizer
        self.critic_optimizer = critic_optimizer
        self.temperature_optimizer = temperature_optimizer
        self.combiners = combiners
        self.net_obs_dim, self.action_dim = net_obs_dim, action_dim
        self.target_entropy = target_entropy
        self._mean = Mean()
        device = log_alpha.device
        self.skips = SkipCounter(num_tasks, device)
        """Skipped updates, counted on the device (read back by the agent every so often)."""
        self.iteration = torch.zeros((), dtype=torch.int64, device=device)
        """The iteration an update belongs to, on the device, so that a captured update reads it."""

    def net_obs(self, obs: Tensor) -> Tensor:
        return obs if self.config.use_task_id else obs[..., : self.net_obs_dim]

    def is_combined(self, group: str) -> bool:
        """Whether the loss ``group`` goes through a combiner other than the mean."""
        return group in self.config.combine and not isinstance(self.combiners[group], Mean)

    def _combiner_for(self, group: str) -> Combiner:
        """The loss's combiner, or ``mean`` for a loss not in ``config.combine`` (one backward pass)."""
        return self.combiners[group] if self.is_combined(group) else self._mean

    def backward(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], Any],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        *,
        module: nn.Module,
        diagnostics: bool,
        has_aux: bool,
        batched_loss: Callable[[], Any],
    ) -> tuple[CombinedGradient, Any]:
        """Write the ``.grad`` of ``params`` from the loss ``group``'s per-task losses; return what
        the combiner did and the loss function's aux output (``None`` without ``has_aux``).

        ``loss_fn(params, task_batch)`` is one task's loss (``params=None``: the modules' own, on
        the whole batch, which is what ``batched_loss`` calls).
        """
        result = backward_per_task_func(
            loss_fn,
            params,
            task_batch,
            self._combiner_for(group),
            diagnostics=diagnostics,
            chunk_size=self.config.chunk_size,
            randomness="error",
            has_aux=has_aux,
            batched_loss=batched_loss,
            module=module,
        )
        if has_aux:
            return cast("tuple[CombinedGradient, Any]", result)
        return cast(CombinedGradient, result), None

    def draw_noise(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Standard normal noise ``(2, *shape)``: the next actions' (target) and the actions' (actor loss)."""
        return torch.randn((2, *shape), device=device)

    def combine_temperature(self, task_grads: Tensor, losses: Tensor) -> None:
        """Write the combined per-task gradients of the shared temperature into its ``.grad``."""
        write_combined_grad(self.combiners["temperature"], [self.log_alpha], [task_grads.unsqueeze(1)], losses=losses)

    def __call__(self, batch: TaskBatch, diagnostics: bool = False) -> UpdateStats:
        """One update on a ``(K, B, ...)`` batch, as tensor operations only, with the state changed in
        place: capturable in a CUDA graph. ``diagnostics`` adds gradient norms and cosines."""
        cfg = self.config
        # Leading dimensions before (K, B): none here, the runs' in a pack (PackedSACUpdate).
        *lead, num_tasks, batch_size = batch.reward.shape
        obs, next_obs = self.net_obs(batch.obs), self.net_obs(batch.next_obs)
        action = torch.as_tensor(batch.action)
        # Noise is drawn here, outside the per-task vmap, so the loss functions are deterministic.
        noise = self.draw_noise((num_tasks, batch_size, self.action_dim), obs.device)
        alpha = self.log_alpha.detach().exp().expand(*lead, num_tasks).unsqueeze(-1)  # (..., K, 1)
        target = soft_q_target(
            self.actor,
            self.critic_target,
            batch.reward,
            next_obs,
            batch.terminated,
            noise[0],
            alpha,
            cfg.gamma,
        )

        # Critic.
        critic_params: dict[str, Tensor] = dict(self.critic.named_parameters())
        critic_batch = (obs, action, target)

        def critic_loss_fn(params: dict[str, Tensor] | None, task: tuple[Tensor, ...]) -> Tensor:
            return critic_losses(self.critic, params, *task)

        # No zero_grad anywhere: every .grad is overwritten below, never accumulated into.
        critic, _ = self.backward(
            "critic",
            critic_loss_fn,
            critic_params,
            critic_batch,
            module=self.critic,
            diagnostics=diagnostics,
            has_aux=False,
            batched_loss=lambda: critic_loss_fn(None, critic_batch),
        )
        critic_ok = guarded_step(self.critic_optimizer, critic.losses)
        if self.is_combined("critic") and uses_after_step(self.combiners["critic"]):
            with torch.no_grad():  # FAMO-style methods learn from the loss change on the same batch.
                self.combiners["critic"].after_step(critic_losses(self.critic, critic_params, *critic_batch))

        # Actor: the critic is held fixed (detached parameters) while the actor moves.
        actor_params: dict[str, Tensor] = dict(self.actor.named_parameters())
        frozen_critic = {name: p.detach() for name, p in critic_params.items()}
        actor_batch = (obs, noise[1], alpha)

        def actor_loss_fn(
            params: dict[str, Tensor] | None, task: tuple[Tensor, ...]
        ) -> tuple[Tensor, Tensor]:
            # The plain path (params None) calls the modules themselves; its backward pass is then
            # restricted to the actor's parameters, which holds the critic fixed just the same.
            critic_params = None if params is None else frozen_critic
            return actor_losses(self.actor, params, self.critic, critic_params, *task)

        actor, mean_log_prob = self.backward(
            "actor",
            actor_loss_fn,
            actor_params,
            actor_batch,
            module=self.actor,
            diagnostics=diagnostics,
            has_aux=True,
            batched_loss=lambda: actor_loss_fn(None, actor_batch),
        )
        update_ok = guarded_step(self.actor_optimizer, actor.losses, critic_ok)
        if self.is_combined("actor") and uses_after_step(self.combiners["actor"]):
            with torch.no_grad():
                self.combiners["actor"].after_step(actor_loss_fn(actor_params, actor_batch)[0])

        # Temperature: d loss_k / d log α = −(mean log π_k + target entropy), so no autograd needed.
        task_grads = -(mean_log_prob + self.target_entropy)  # (..., K)
        temp_losses = temperature_losses(self.log_alpha.detach(), mean_log_prob, self.target_entropy)
        if not cfg.shared_temperature:
            self.log_alpha.grad = task_grads  # each task's temperature follows its own loss
        elif self.is_combined("temperature"):
            self.combine_temperature(task_grads, temp_losses)
        else:
            self.log_alpha.grad = task_grads.mean(dim=-1, keepdim=True)
        update_ok = guarded_step(self.temperature_optimizer, mean_log_prob, update_ok)
        if self.is_combined("temperature") and uses_after_step(self.combiners["temperature"]):
            self.combiners["temperature"].after_step(
                temperature_losses(self.log_alpha.detach(), mean_log_prob, self.target_entropy)
            )

        polyak_update(self.critic.parameters(), self.critic_target.parameters(), cfg.tau)
        self.skips.count(update_ok, critic.losses, actor.losses, self.iteration)
        return UpdateStats(
            critic_loss=critic.losses,
            actor_loss=actor.losses,
            temperature=self.log_alpha.detach().exp().expand(*lead, num_tasks).clone(),
            critic_weights=critic.weights,
            actor_weights=actor.weights,
            critic_grad_norms=critic.grad_norms,
            critic_cosine=mean_pairwise_cosine(critic.cosine),
            actor_grad_norms=actor.grad_norms,
            actor_cosine=mean_pairwise_cosine(actor.cosine),
            finite=update_ok,
        )
