"""SB3's TD3 with per-task losses combined by a gradient combiner: the recipe of
:mod:`mtrl_fair.sb3.recipe` in another algorithm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from stable_baselines3 import TD3
from stable_baselines3.common.utils import polyak_update
from torch import Tensor
from torch.func import functional_call

from mtrl_fair.agents.sac_losses import polyak_update as fused_polyak_update
from mtrl_fair.combiners import Combiner
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.sb3.combiner_set import (
    CombinerSet,
    check_one_hot,
    combiner_settings,
    fused_adam,
    record_per_task,
    task_names,
)
from mtrl_fair.sb3.recipe import after_step, combined_backward, sample_per_task


class MultiTaskTD3(TD3):
    """SB3's TD3 with per-task critic and actor losses combined by a gradient combiner.

    It shows the recipe for any SB3 off-policy algorithm: sample with :func:`sample_per_task`,
    write each loss for one task's batch, and replace ``loss.backward()`` by
    :func:`combined_backward`. Arguments as for :class:`MultiTaskSAC` (without temperature).
    """

    LOSS_GROUPS: ClassVar[tuple[str, ...]] = ("critic", "actor")

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        combiner: str = "fairgrad",
        combiner_kwargs: dict[str, Any] | None = None,
        combine: Sequence[str] = ("critic", "actor"),
        **kwargs: Any,
    ) -> None:
        self.combiner_name, self.combiner_kwargs, self.combine = combiner_settings(
            combiner, combiner_kwargs, combine, self.LOSS_GROUPS
        )
        super().__init__(policy, env, **fused_adam(kwargs))

    def _setup_model(self) -> None:
        super()._setup_model()
        self.num_tasks = self.n_envs
        self.task_names = task_names(self.env, self.num_tasks)
        self.combiners = CombinerSet(self.combiner_name, self.combiner_kwargs, self.LOSS_GROUPS)
        self._checked_one_hot = False

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "combiners"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "combiners"], variables

    def _combiner_for(self, group: str) -> Combiner:
        return self.combiners[group] if group in self.combine else Mean()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        batch_per_task = max(1, batch_size // self.num_tasks)
        critic_weights, actor_weights, critic_losses, actor_losses = [], [], [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            batch = sample_per_task(self.replay_buffer, batch_per_task, self.num_tasks)  # type: ignore[arg-type]
            if not self._checked_one_hot:
                self._checked_one_hot = check_one_hot(batch.observations, self.num_tasks)
            with torch.no_grad():
                noise = (torch.randn_like(batch.actions) * self.target_policy_noise).clamp(
                    -self.target_noise_clip, self.target_noise_clip
                )
                flat_next = batch.next_observations.flatten(0, 1)
                next_actions = (self.actor_target(flat_next) + noise.flatten(0, 1)).clamp(-1, 1)
                next_q = torch.cat(self.critic_target(flat_next, next_actions), dim=1).min(dim=1).values
                target = batch.rewards.squeeze(-1) + (
                    1 - batch.dones.squeeze(-1)
                ) * self.gamma * next_q.view_as(batch.rewards.squeeze(-1))

            def critic_loss(params: dict[str, Tensor], task: tuple[Tensor, Tensor, Tensor]) -> Tensor:
                obs, actions, target_q = task
                q_values = functional_call(self.critic, params, (obs, actions))
                return sum(((q.squeeze(-1) - target_q) ** 2).mean() for q in q_values)

            self.critic.optimizer.zero_grad()
            critic_batch = (batch.observations, batch.actions, target)
            critic = combined_backward(critic_loss, self.critic, critic_batch, self._combiner_for("critic"))
            self.critic.optimizer.step()
            critic_params = dict(self.critic.named_parameters())
            after_step(self._combiner_for("critic"), critic_loss, critic_params, critic_batch)
            critic_weights.append(critic.weights)
            critic_losses.append(critic.losses)

            if self._n_updates % self.policy_delay == 0:
                frozen_critic = {name: p.detach() for name, p in self.critic.named_parameters()}

                def actor_loss(
                    params: dict[str, Tensor], obs: Tensor, critic: dict[str, Tensor] = frozen_critic
                ) -> Tensor:
                    actions = functional_call(self.actor, params, (obs,))
                    return -functional_call(self.critic, critic, (obs, actions))[0].mean()

                self.actor.optimizer.zero_grad()
                actor = combined_backward(
                    actor_loss, self.actor, batch.observations, self._combiner_for("actor")
                )
                self.actor.optimizer.step()
                actor_params = dict(self.actor.named_parameters())
                after_step(self._combiner_for("actor"), actor_loss, actor_params, batch.observations)
                actor_weights.append(actor.weights)
                actor_losses.append(actor.losses)
                fused_polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                fused_polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if critic_losses:
            self.logger.record("train/critic_loss", float(torch.stack(critic_losses).mean()))
            record_per_task(
                self.logger, "combiner/critic_weight", torch.stack(critic_weights).mean(0), self.task_names
            )
        if actor_losses:
            self.logger.record("train/actor_loss", float(torch.stack(actor_losses).mean()))
            record_per_task(
                self.logger, "combiner/actor_weight", torch.stack(actor_weights).mean(0), self.task_names
            )
