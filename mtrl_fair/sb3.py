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

Departures from SB3's SAC, on purpose: a batch holds ``batch_size // K`` transitions of every task
(SB3 samples sub-envs at random), and the squashed-Gaussian log-density uses the exact
``log(1 − tanh²u)`` instead of SB3's ``log(1 − tanh²u + 1e-6)``, with the noise drawn outside the
per-task ``vmap``. gSDE is not supported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mtrl_fair.agents.sac_losses import actor_losses, critic_losses, soft_q_target
from mtrl_fair.agents.sac_losses import polyak_update as fused_polyak_update
from mtrl_fair.combiners import Combiner, make
from mtrl_fair.combiners.base import uses_after_step
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.envs import final_observations, make_vector_env, resolve_tasks
from mtrl_fair.jacobian import CombinedGradient, backward_per_task_func

__all__ = [
    "CombinerSet",
    "MetaWorldVecEnv",
    "MultiTaskSAC",
    "MultiTaskTD3",
    "combined_backward",
    "make_vec_env",
    "sample_per_task",
]


# ------------------------------------------------------------------------------------------------
# Meta-World as an SB3 VecEnv
# ------------------------------------------------------------------------------------------------


class MetaWorldVecEnv(VecEnv):
    """A gymnasium vector env of Meta-World tasks behind SB3's ``VecEnv`` interface.

    SB3's conventions: ``step`` returns ``(obs, rewards, dones, infos)`` with one info dict per
    task; when an episode ends the returned observation is the next episode's first one, and the
    info holds ``terminal_observation``, ``TimeLimit.truncated``, ``episode`` (return, length, time,
    as SB3's ``Monitor`` writes it) and ``is_success`` (``info["success"]`` was ever 1).
    """

    def __init__(
        self, env: gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv, task_names: Sequence[str]
    ) -> None:
        self.env = env  # before VecEnv.__init__, which reads render_mode through get_attr
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.task_names = list(task_names)
        self._actions: np.ndarray | None = None
        self._success = np.zeros(self.num_envs, dtype=bool)
        self._return = np.zeros(self.num_envs)
        self._length = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._success[:], self._return[:], self._length[:] = False, 0.0, 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None, "step_async must come before step_wait"
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        success = np.asarray(info.get("success", np.zeros(self.num_envs)), dtype=float)
        if dones.any() and "final_info" in info:
            final_success = np.asarray(
                info["final_info"].get("success", np.zeros(self.num_envs)), dtype=float
            )
            success = np.where(dones, final_success, success)
        self._success |= success >= 1.0
        self._return += reward
        self._length += 1
        last_obs = final_observations(obs, dones, info) if dones.any() else obs
        infos: list[dict[str, Any]] = []
        for k in range(self.num_envs):
            item: dict[str, Any] = {"success": float(success[k])}
            if dones[k]:
                item["terminal_observation"] = last_obs[k]
                item["TimeLimit.truncated"] = bool(truncated[k] and not terminated[k])
                item["episode"] = {
                    "r": float(self._return[k]),
                    "l": int(self._length[k]),
                    "t": round(time.time() - self._start, 6),
                }
                item["is_success"] = bool(self._success[k])
                self._success[k], self._return[k], self._length[k] = False, 0.0, 0
            infos.append(item)
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        values = self.env.get_attr(attr_name)
        return [values[i] for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        current = list(self.env.get_attr(attr_name))
        for i in self._indices(indices):
            current[i] = value
        self.env.set_attr(attr_name, current)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        results = self.env.call(method_name, *method_args, **method_kwargs)
        return [results[i] for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        # The episode statistics SB3's Monitor would add are already in the infos (see above).
        return [False for _ in self._indices(indices)]


def make_vec_env(
    benchmark: str = "MT10",
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    *,
    vector_strategy: str = "sync",
    max_episode_steps: int = 500,
) -> MetaWorldVecEnv:
    """Meta-World MT10/MT50 (or a subset of its tasks) as an SB3 ``VecEnv``, one sub-env per task.

    Observations are Meta-World's 39 values followed by the one-hot task id, as for
    :func:`mtrl_fair.envs.make_vector_env`, so :func:`mtrl_fair.evaluate` scores the SB3 models
    trained on it.
    """
    task_names = resolve_tasks(benchmark, tasks)
    env = make_vector_env(
        benchmark, task_names, seed=seed, vector_strategy=vector_strategy, max_episode_steps=max_episode_steps
    )
    vec_env = MetaWorldVecEnv(env, task_names)
    vec_env.seed(seed)
    return vec_env


# ------------------------------------------------------------------------------------------------
# Helpers for any SB3 off-policy algorithm
# ------------------------------------------------------------------------------------------------


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
    with ``module`` itself on the whole batch; the ``mean`` shortcut then uses it instead of
    ``vmap(loss_fn)``, which saves their Python overhead (most of a small update's time on a GPU).
    """

    def with_aux(params: dict[str, Tensor], task: Any) -> tuple[Tensor, Tensor]:
        loss = loss_fn(params, task)
        return loss, loss.detach()

    def batched_with_aux() -> tuple[Tensor, Tensor]:
        assert batched_loss is not None
        losses = batched_loss()
        return losses, losses.detach()

    result, _ = _backward_with_aux(
        with_aux,
        dict(module.named_parameters()),
        task_batch,
        combiner,
        diagnostics,
        batched_loss=None if batched_loss is None else batched_with_aux,
    )
    return result


def _backward_with_aux(
    loss_fn: Callable[[dict[str, Tensor], Any], tuple[Tensor, Any]],
    params: Mapping[str, Tensor],
    task_batch: Any,
    combiner: Combiner,
    diagnostics: bool = False,
    batched_loss: Callable[[], tuple[Tensor, Any]] | None = None,
) -> tuple[CombinedGradient, Any]:
    """``batched_loss()``, when given, is ``loss_fn`` on the whole ``(K, B, ...)`` batch with the
    parameters as they are, returning the ``(K,)`` task losses: the ``mean`` path then skips
    ``vmap`` and ``functional_call``, whose Python overhead dominates a GPU update."""
    if isinstance(combiner, Mean) and not diagnostics:
        # The mean of the task losses, from one batched forward and one backward pass.
        if batched_loss is not None:
            losses, aux = batched_loss()
        else:
            losses, aux = vmap(loss_fn, in_dims=(None, 0), randomness="error")(dict(params), task_batch)
        # inputs=: gradients reach these parameters only (not, e.g., a critic the actor loss reads).
        losses.mean().backward(inputs=list(params.values()))
        num_tasks = losses.shape[0]
        return CombinedGradient(losses.detach(), losses.new_full((num_tasks,), 1.0 / num_tasks)), aux
    return backward_per_task_func(
        loss_fn, params, task_batch, combiner, diagnostics=diagnostics, randomness="error", has_aux=True
    )


def _after_step(
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


def _combiner_settings(
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


def _task_names(env: Any, num_tasks: int) -> list[str]:
    return list(getattr(env, "task_names", [f"task-{k}" for k in range(num_tasks)]))


def _record_per_task(logger: Any, prefix: str, values: Tensor, task_names: Sequence[str]) -> None:
    for name, value in zip(task_names, values.detach().float().cpu().tolist(), strict=True):
        logger.record(f"{prefix}/{name}", value)


def _check_one_hot(observations: Tensor, num_tasks: int) -> bool:
    """Column k of the buffer must be task k: its observations end with the one-hot id ``e_k``."""
    one_hot = observations[..., -num_tasks:]
    expected = torch.eye(num_tasks, device=one_hot.device)[:, None, :].expand_as(one_hot)
    if not torch.equal(one_hot, expected):
        raise ValueError(
            "the observations of sub-env k must end with the one-hot id of task k (as make_vec_env builds "
            "them); this env's do not, so per-task losses cannot be formed"
        )
    return True


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


# ------------------------------------------------------------------------------------------------
# SAC
# ------------------------------------------------------------------------------------------------


def _fused_adam(kwargs: dict[str, Any]) -> dict[str, Any]:
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
        self.combiner_name, self.combiner_kwargs, self.combine = _combiner_settings(
            combiner, combiner_kwargs, combine, self.LOSS_GROUPS
        )
        self.per_task_temperature = per_task_temperature
        super().__init__(policy, env, **_fused_adam(kwargs))

    def _setup_model(self) -> None:
        super()._setup_model()
        self.num_tasks = self.n_envs
        self.task_names = _task_names(self.env, self.num_tasks)
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
                self._checked_one_hot = _check_one_hot(batch.observations, self.num_tasks)
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
        _record_per_task(self.logger, "combiner/critic_weight", mean["critic_weights"], self.task_names)
        _record_per_task(self.logger, "combiner/actor_weight", mean["actor_weights"], self.task_names)
        if self.per_task_temperature:
            _record_per_task(self.logger, "train/ent_coef", mean["ent_coef"], self.task_names)

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
        _after_step(self._combiner_for("critic"), critic_loss, critic_params, critic_batch)

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
        actor_result, mean_log_prob = _backward_with_aux(
            actor_loss,
            actor_params,
            actor_batch,
            self._combiner_for("actor"),
            batched_loss=lambda: actor_losses(actor, None, critic, None, *actor_batch),
        )
        self.actor.optimizer.step()
        _after_step(self._combiner_for("actor"), lambda p, t: actor_loss(p, t)[0], actor_params, actor_batch)

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


# ------------------------------------------------------------------------------------------------
# TD3: the same recipe in another algorithm
# ------------------------------------------------------------------------------------------------


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
        self.combiner_name, self.combiner_kwargs, self.combine = _combiner_settings(
            combiner, combiner_kwargs, combine, self.LOSS_GROUPS
        )
        super().__init__(policy, env, **_fused_adam(kwargs))

    def _setup_model(self) -> None:
        super()._setup_model()
        self.num_tasks = self.n_envs
        self.task_names = _task_names(self.env, self.num_tasks)
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
                self._checked_one_hot = _check_one_hot(batch.observations, self.num_tasks)
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
            _after_step(self._combiner_for("critic"), critic_loss, critic_params, critic_batch)
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
                _after_step(self._combiner_for("actor"), actor_loss, actor_params, batch.observations)
                actor_weights.append(actor.weights)
                actor_losses.append(actor.losses)
                fused_polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                fused_polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if critic_losses:
            self.logger.record("train/critic_loss", float(torch.stack(critic_losses).mean()))
            _record_per_task(
                self.logger, "combiner/critic_weight", torch.stack(critic_weights).mean(0), self.task_names
            )
        if actor_losses:
            self.logger.record("train/actor_loss", float(torch.stack(actor_losses).mean()))
            _record_per_task(
                self.logger, "combiner/actor_weight", torch.stack(actor_weights).mean(0), self.task_names
            )
