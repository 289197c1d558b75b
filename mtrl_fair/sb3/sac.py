"""SB3's SAC with per-task losses combined by a gradient combiner.

``MultiTaskSAC("MlpPolicy", make_vec_env("MT10"), combiner="fairgrad")`` is SB3's SAC whose
``train()`` keeps the critic and actor losses per task and sends their per-task gradients through a
combiner (:mod:`mtrl_fair.combiners`) before each optimiser step, with the same per-task Jacobian
code as :class:`mtrl_fair.agents.MTSAC` (:mod:`mtrl_fair.jacobian`). Everything else is SB3's:
``learn``, ``predict``, callbacks, the logger, ``save`` / ``load``.

Departures from SB3's SAC, on purpose: a batch holds ``batch_size // K`` transitions of every task
(SB3 samples sub-envs at random), and the squashed-Gaussian log-density uses the exact
``log(1 − tanh²u)`` instead of SB3's ``log(1 − tanh²u + 1e-6)``, with the noise drawn outside the
per-task ``vmap``. gSDE is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from torch import Tensor, nn

from mtrl_fair.agents.sac_losses import actor_losses, critic_losses, soft_q_target
from mtrl_fair.agents.sac_losses import polyak_update as fused_polyak_update
from mtrl_fair.combiners import Combiner
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.jacobian import backward_per_task_func
from mtrl_fair.sb3.combiner_set import (
    CombinerSet,
    check_one_hot,
    combiner_settings,
    fused_adam,
    record_per_task,
    task_names,
)
from mtrl_fair.sb3.recipe import after_step, combined_backward, sample_per_task


class _ActorDistribution(nn.Module):
    """Wraps an SB3 actor so that ``functional_call`` reaches ``get_action_dist_params``."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        # SB3's feature extractor flattens everything after the first dimension: give it rows.
        lead = obs.shape[:-1]
        mean, log_std, _ = self.actor.get_action_dist_params(obs.reshape(-1, obs.shape[-1]))  # type: ignore[operator]
        return mean.reshape(*lead, -1), log_std.reshape(*lead, -1)


class _EnsembleCritic(nn.Module):
    """SB3's twin critic in the shape of our ensemble critic, for :mod:`mtrl_fair.agents.sac_losses`:
    ``(*lead, ·)`` inputs give the members' Q-values stacked first, ``(members, *lead)``."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        # SB3's critic concatenates features and actions along dim 1: give it rows.
        lead = obs.shape[:-1]
        q_values = self.critic(obs.reshape(-1, obs.shape[-1]), actions.reshape(-1, actions.shape[-1]))
        return torch.stack(q_values).reshape(len(q_values), *lead)


class MultiTaskSAC(SAC):
    """SB3's SAC with per-task losses combined by a gradient combiner.

    Args:
        policy, env: as for :class:`stable_baselines3.SAC`; ``env`` has one sub-env per task (see
            :func:`make_vec_env`).
        combiner: a registry name (:func:`mtrl_fair.combiners.available`), e.g. ``"fairgrad"``.
        combiner_kwargs: its hyperparameters, e.g. ``{"alpha": 2.0}``.
        combine: which losses go through the combiner (``"critic"``, ``"actor"``); the others use
            the mean of the task losses.
        per_task_temperature: one learned entropy coefficient per task (needs ``ent_coef="auto"``).
        **kwargs: any other argument of SB3's ``SAC``. ``batch_size`` is the total over tasks:
            each gradient step uses ``batch_size // K`` transitions of every task.
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
        per_task_temperature: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_sde"):
            raise ValueError("MultiTaskSAC does not support gSDE (use_sde=True)")
        self.combiner_name, self.combiner_kwargs, self.combine = combiner_settings(
            combiner, combiner_kwargs, combine, self.LOSS_GROUPS
        )
        self.per_task_temperature = per_task_temperature
        super().__init__(policy, env, **fused_adam(kwargs))

    def _setup_model(self) -> None:
        super()._setup_model()
        self.num_tasks = self.n_envs
        self.task_names = task_names(self.env, self.num_tasks)
        self.combiners = CombinerSet(self.combiner_name, self.combiner_kwargs, self.LOSS_GROUPS)
        self._checked_one_hot = False
        self._actor_distribution = _ActorDistribution(self.actor)
        self._ensemble_critic = _EnsembleCritic(self.critic)
        self._ensemble_critic_target = _EnsembleCritic(self.critic_target)
        if self.per_task_temperature:
            if self.ent_coef_optimizer is None:
                raise ValueError("per_task_temperature needs a learned entropy coefficient (ent_coef='auto')")
            assert self.log_ent_coef is not None  # set by SAC with ent_coef="auto"
            init = float(self.log_ent_coef.detach().exp().item())
            self.log_ent_coef = torch.full(
                (self.num_tasks,), np.log(init), device=self.device, requires_grad=True
            )
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            # As SB3 builds it (Adam at the policy's learning rate), but fused like the policy's.
            self.ent_coef_optimizer = torch.optim.Adam(
                [self.log_ent_coef], lr=self.lr_schedule(1), fused=True
            )

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "combiners",
            "_actor_distribution",
            "_ensemble_critic",
            "_ensemble_critic_target",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "combiners"], variables

    def _combiner_for(self, group: str) -> Combiner:
        return self.combiners[group] if group in self.combine else Mean()

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        batch_per_task = batch_size // self.num_tasks
        if batch_per_task < 1:
            raise ValueError(
                f"batch_size={batch_size} is smaller than the number of tasks ({self.num_tasks})"
            )

        records: list[dict[str, Tensor]] = []
        for gradient_step in range(gradient_steps):
            batch = sample_per_task(self.replay_buffer, batch_per_task, self.num_tasks)  # type: ignore[arg-type]
            if not self._checked_one_hot:
                self._checked_one_hot = check_one_hot(batch.observations, self.num_tasks)
            records.append(self._update(batch))
            if gradient_step % self.target_update_interval == 0:
                # One foreach kernel instead of SB3's two per tensor (launch-bound on a GPU).
                fused_polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        self._n_updates += gradient_steps
        if not records:
            return
        mean = {key: torch.stack([r[key] for r in records]).mean(0) for key in records[0]}
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/critic_loss", float(mean["critic_loss"].mean()))
        self.logger.record("train/actor_loss", float(mean["actor_loss"].mean()))
        self.logger.record("train/ent_coef", float(mean["ent_coef"].mean()))
        record_per_task(self.logger, "combiner/critic_weight", mean["critic_weights"], self.task_names)
        record_per_task(self.logger, "combiner/actor_weight", mean["actor_weights"], self.task_names)
        if self.per_task_temperature:
            record_per_task(self.logger, "train/ent_coef", mean["ent_coef"], self.task_names)

    def _update(self, batch: ReplayBufferSamples) -> dict[str, Tensor]:
        """One gradient step on a ``(K, B, ...)`` batch; returns per-task statistics (device tensors)."""
        num_tasks, batch_per_task, _ = batch.observations.shape
        action_dim = batch.actions.shape[-1]
        noise = torch.randn((2, num_tasks, batch_per_task, action_dim), device=self.device)
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            ent_coef = self.log_ent_coef.detach().exp().expand(num_tasks)
        else:
            ent_coef = self.ent_coef_tensor.expand(num_tasks)
        ent_coef_column = ent_coef.reshape(num_tasks, 1)

        target = soft_q_target(
            self._actor_distribution,
            self._ensemble_critic_target,
            batch.rewards.squeeze(-1),
            batch.next_observations,
            batch.dones.squeeze(-1),
            noise[0],
            ent_coef_column,
            self.gamma,
        )

        # The per-task path passes parameters (functional_call); the mean path calls the modules.
        critic = self._ensemble_critic
        critic_batch = (batch.observations, batch.actions, target)

        def critic_loss(params: dict[str, Tensor], task: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            return critic_losses(critic, params, *task)

        self.critic.optimizer.zero_grad()
        critic_result = combined_backward(
            critic_loss,
            critic,
            critic_batch,
            self._combiner_for("critic"),
            batched_loss=lambda: critic_losses(critic, None, *critic_batch),
        )
        self.critic.optimizer.step()
        critic_params = dict(critic.named_parameters())
        after_step(self._combiner_for("critic"), critic_loss, critic_params, critic_batch)

        # The actor loss reads the critic without training it: detached parameters on the per-task
        # path, and on the mean path a backward restricted to the actor's parameters.
        frozen_critic = {name: p.detach() for name, p in critic_params.items()}
        actor = self._actor_distribution
        actor_params = dict(actor.named_parameters())
        actor_batch = (batch.observations, noise[1], ent_coef_column)

        def actor_loss(
            params: dict[str, Tensor], task: tuple[Tensor, Tensor, Tensor]
        ) -> tuple[Tensor, Tensor]:
            return actor_losses(actor, params, critic, frozen_critic, *task)

        self.actor.optimizer.zero_grad()
        actor_result, mean_log_prob = backward_per_task_func(
            actor_loss,
            actor_params,
            actor_batch,
            self._combiner_for("actor"),
            randomness="error",
            has_aux=True,
            batched_loss=lambda: actor_losses(actor, None, critic, None, *actor_batch),
            module=actor,
        )
        self.actor.optimizer.step()
        after_step(self._combiner_for("actor"), lambda p, t: actor_loss(p, t)[0], actor_params, actor_batch)

        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            # d loss_k / d log α = −(mean log π_k + target entropy): no autograd needed.
            task_grads = -(mean_log_prob + self.target_entropy)
            self.ent_coef_optimizer.zero_grad()
            self.log_ent_coef.grad = task_grads if self.per_task_temperature else task_grads.mean().reshape(1)
            self.ent_coef_optimizer.step()
        return {
            "critic_loss": critic_result.losses,
            "actor_loss": actor_result.losses,
            "ent_coef": ent_coef.clone(),
            "critic_weights": critic_result.weights,
            "actor_weights": actor_result.weights,
        }
