"""Multi-task SAC with a gradient combiner on the per-task losses, in Stable-Baselines3's shape.

``MTSAC(env, combiner="fairgrad", combiner_kwargs={"alpha": 2.0}).learn(total_timesteps)`` trains
on a gymnasium vector env with one sub-env per task (see :func:`mtrl_fair.envs.make_vector_env`).
``predict``, ``save`` and ``load`` follow SB3's conventions.

One training iteration steps every task's env once, stores the K transitions, samples ``B``
transitions per task and makes one update. In the update the critic, actor and (optionally)
temperature losses are kept per task, and for every loss named in ``config.combine`` the K task
gradients of the shared parameters go through the combiner (:mod:`mtrl_fair.jacobian`) before the
optimiser step. Losses not combined, and every loss when the combiner is ``mean``, take the plain
``losses.mean().backward()`` path, which is the same maths with one backward pass.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtrl_fair.agents.buffer import MultiTaskReplayBuffer, TaskBatch
from mtrl_fair.agents.networks import Actor, TwinCritic, squashed_gaussian
from mtrl_fair.agents.sac_losses import (
    actor_losses,
    critic_losses,
    polyak_update,
    soft_q_target,
    temperature_losses,
)
from mtrl_fair.combiners import Combiner, make
from mtrl_fair.combiners.base import uses_after_step
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.combiners.torchjd_adapter import TORCHJD_PREFIX, TorchJDAggregator
from mtrl_fair.jacobian import CombinedGradient, backward_per_task_func, write_combined_grad

__all__ = [
    "LOSS_GROUPS",
    "MTSAC",
    "MTSACConfig",
    "NonFiniteUpdateError",
    "StepResult",
    "UpdateStats",
    "resolve_device",
]

LOSS_GROUPS = ("critic", "actor", "temperature")
_NUMERICS_CHECK_EVERY = 100
"""Iterations between the host-side checks of skipped updates (each check reads from the device)."""
CHECKPOINT_FORMAT = "mtrl-fair/mtsac"
CHECKPOINT_VERSION = 1


@dataclass
class MTSACConfig:
    """Hyperparameters of multi-task SAC (defaults: the reference Meta-World v3 MTSAC set-up)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [400, 400, 400])
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size_per_task: int = 128
    buffer_size_per_task: int = 100_000
    """Replay capacity of each task (1e6 transitions in all for MT10, 5e6 for MT50)."""
    warmup_steps: int = 5_000
    """Iterations of uniformly random actions before the first update."""
    initial_temperature: float = 1.0
    shared_temperature: bool = False
    """One temperature for all tasks (the FairGrad paper's RL code) instead of one per task."""
    target_entropy: float | None = None
    """``None``: minus the action dimension, as in SAC."""
    combine: list[str] = field(default_factory=lambda: ["critic", "actor"])
    """Which per-task losses go through the combiner: any of ``critic``, ``actor``, ``temperature``."""
    use_task_id: bool = True
    """Feed the one-hot task id to the networks. ``False`` drops it (the FairGrad paper's RL code)."""
    chunk_size: int | None = None
    """Compute per-task gradients this many tasks at a time (bounds memory for MT50); None: all."""
    max_consecutive_skips: int = 100
    """Stop training after this many updates in a row had a non-finite loss or gradient."""
    cuda_graph: bool = False
    """On CUDA, record the update once as a CUDA graph and replay it every iteration.

    One launch replaces the hundreds of small kernels of an eager update, which is launch-bound on
    a GPU. The first updates run eagerly (on a side stream, to warm up), the iterations that
    compute diagnostics run eagerly, and a combiner whose solve cannot be captured falls back to
    the eager update with a warning. Ignored on the CPU.
    """
    overlap_env_steps: bool = False
    """Step the envs in a background thread while the update runs (after warm-up).

    The update then samples the buffer before the current step's transition is added, one
    transition later than in the sequential loop. It pays when the envs are stepped in other
    processes (``vector_strategy=async``) and the update runs on a GPU: neither waits for the other.
    """

    def validate(self) -> None:
        """Raise a one-line :class:`ValueError` for any value outside its allowed range."""
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ValueError(
                f"agent.hidden_sizes must be a non-empty list of positive widths, got {list(self.hidden_sizes)}"
            )
        for name in ("actor_lr", "critic_lr", "temperature_lr", "initial_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"agent.{name} must be a finite number > 0, got {value}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"agent.gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"agent.tau must be in (0, 1], got {self.tau}")
        for name in ("batch_size_per_task", "buffer_size_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"agent.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(
                f"agent.target_entropy must be a finite number or null, got {self.target_entropy}"
            )
        unknown = [name for name in self.combine if name not in LOSS_GROUPS]
        if unknown or len(set(self.combine)) != len(self.combine):
            raise ValueError(
                f"agent.combine must list distinct loss names from {', '.join(LOSS_GROUPS)}, got {list(self.combine)}"
            )
        if "temperature" in self.combine and not self.shared_temperature:
            raise ValueError(
                "agent.combine includes 'temperature' but each task has its own temperature, so there is "
                "nothing shared to combine; set agent.shared_temperature=true or drop 'temperature'"
            )
        if self.max_consecutive_skips < 1:
            raise ValueError(f"agent.max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"agent.chunk_size must be >= 1 or null, got {self.chunk_size}")


class UpdateStats(NamedTuple):
    """What one update measured, as device tensors (read them back only when logging)."""

    critic_loss: Tensor
    """(K,) per-task critic losses."""
    actor_loss: Tensor
    """(K,) per-task actor losses."""
    temperature: Tensor
    """(K,) temperature of each task (equal entries when shared)."""
    critic_weights: Tensor
    """(K,) task weights the combiner gave the critic gradients (1/K when not combined)."""
    actor_weights: Tensor
    """(K,) task weights the combiner gave the actor gradients (1/K when not combined)."""
    critic_grad_norms: Tensor | None = None
    """(K,) norms of the per-task critic gradients (diagnostic updates only)."""
    critic_cosine: Tensor | None = None
    """Mean pairwise cosine between the task gradients of the critic (diagnostic updates only)."""
    actor_grad_norms: Tensor | None = None
    actor_cosine: Tensor | None = None
    finite: Tensor | None = None
    """0-d bool: False when a non-finite loss or gradient made the update skip its optimiser steps."""


class StepResult(NamedTuple):
    """One training iteration, as handed to a ``learn`` callback."""

    iteration: int
    """Iterations done, this one included."""
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any]
    stats: UpdateStats | None
    """``None`` during warm-up."""


LearnCallback = Callable[["MTSAC", StepResult], "bool | None"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else the CPU; anything else is checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:<index>") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for but CUDA is not available here; use device=cpu or auto"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; allowed: auto, cpu, cuda, cuda:<index>")
    return resolved


def combiner_spec(combiner: Combiner) -> tuple[str, dict[str, Any]]:
    """The registry name and hyperparameters that rebuild ``combiner`` with :func:`make`."""
    if isinstance(combiner, TorchJDAggregator):
        hparams = dict(combiner.hparams())
        return TORCHJD_PREFIX + str(hparams.pop("aggregator_name")), hparams
    return combiner.name, dict(combiner.hparams())


class MTSAC:
    """Multi-task soft actor-critic whose shared-parameter updates go through a gradient combiner.

    Args:
        env: a gymnasium vector env with one sub-env per task and ``Box`` spaces; observations end
            with the one-hot task id (as built by :func:`mtrl_fair.envs.make_vector_env`). It may be
            ``None`` for an agent used only to ``predict`` or ``update``, if the spaces are given.
        combiner: a registry name (see :func:`mtrl_fair.combiners.available`) or a combiner object.
        combiner_kwargs: hyperparameters for a combiner given by name, e.g. ``{"alpha": 2.0}``.
        config: the SAC hyperparameters (:class:`MTSACConfig`).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        seed: seeds torch's generators and the first env reset.
        num_tasks, observation_space, action_space: the task count and the per-task spaces, when
            there is no ``env``.
        task_names: the tasks' names, kept for evaluation and saved with the agent.
    """

    def __init__(
        self,
        env: Any = None,
        *,
        combiner: str | Combiner = "mean",
        combiner_kwargs: dict[str, Any] | None = None,
        config: MTSACConfig | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        num_tasks: int | None = None,
        observation_space: Any = None,
        action_space: Any = None,
        task_names: list[str] | None = None,
    ) -> None:
        self.config = config if config is not None else MTSACConfig()
        self.config.validate()
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.env = env
        if env is not None:
            num_tasks = env.num_envs
            observation_space = env.single_observation_space
            action_space = env.single_action_space
            if task_names is None and hasattr(env, "task_names"):
                task_names = list(env.task_names)
        if num_tasks is None or observation_space is None or action_space is None:
            raise ValueError("MTSAC needs an env, or num_tasks, observation_space and action_space")
        if len(observation_space.shape) != 1 or len(action_space.shape) != 1:
            raise ValueError(
                f"MTSAC needs flat Box spaces, got observation shape {observation_space.shape} and "
                f"action shape {action_space.shape}"
            )
        self.num_tasks = int(num_tasks)
        self.task_names = (
            list(task_names) if task_names is not None else [f"task-{k}" for k in range(self.num_tasks)]
        )
        if len(self.task_names) != self.num_tasks:
            raise ValueError(f"got {len(self.task_names)} task names for {self.num_tasks} tasks")
        self.obs_dim = int(observation_space.shape[0])
        self.action_dim = int(action_space.shape[0])
        self.observation_space = observation_space
        self.action_space = action_space
        # The networks see the state part only when use_task_id is off (the one-hot is the tail).
        self.net_obs_dim = self.obs_dim if self.config.use_task_id else self.obs_dim - self.num_tasks
        if self.net_obs_dim < 1:
            raise ValueError(
                f"observations of size {self.obs_dim} cannot end with a {self.num_tasks}-task one-hot id"
            )
        low = np.asarray(action_space.low, dtype=np.float32)
        high = np.asarray(action_space.high, dtype=np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("MTSAC needs a bounded action space (finite low and high)")
        self._action_low, self._action_high = low, high

        torch.manual_seed(self.seed)
        if env is not None:
            # The warm-up actions come from the env's action space: seeded here, as SB3 does, since
            # a vector env's reset(seed=) seeds its sub-envs but not its batched action space.
            env.action_space.seed(self.seed)
        hidden = [int(h) for h in self.config.hidden_sizes]
        self.actor = Actor(self.net_obs_dim, self.action_dim, hidden).to(self.device)
        self.critic = TwinCritic(self.net_obs_dim, self.action_dim, hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        temperature_shape = (1,) if self.config.shared_temperature else (self.num_tasks,)
        self.log_alpha = torch.full(
            temperature_shape,
            math.log(self.config.initial_temperature),
            device=self.device,
            requires_grad=True,
        )
        self.target_entropy = (
            float(-self.action_dim)
            if self.config.target_entropy is None
            else float(self.config.target_entropy)
        )
        # Fused Adam skips a step on the device when its found_inf flag is set (the mechanism AMP's
        # GradScaler uses): a non-finite update is dropped without reading anything back to the host.
        # A captured update needs the optimizers' step counts on the device (capturable).
        self._use_graph = self.config.cuda_graph and self.device.type == "cuda"
        capturable = self._use_graph
        self.actor_optimizer = torch.optim.Adam(
            self.actor.parameters(), lr=self.config.actor_lr, fused=True, capturable=capturable
        )
        self.critic_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=self.config.critic_lr, fused=True, capturable=capturable
        )
        self.temperature_optimizer = torch.optim.Adam(
            [self.log_alpha], lr=self.config.temperature_lr, fused=True, capturable=capturable
        )

        if isinstance(combiner, str):
            base = make(combiner, **(combiner_kwargs or {}))
        elif isinstance(combiner, Combiner):
            if combiner_kwargs:
                raise ValueError("combiner_kwargs apply only to a combiner given by name")
            base = combiner
        else:
            raise ValueError(f"combiner must be a registry name or a Combiner, got {type(combiner).__name__}")
        # One instance per loss: stateful combiners (FAMO) keep separate state for each.
        self.combiners: dict[str, Combiner] = {group: copy.deepcopy(base) for group in LOSS_GROUPS}

        self.replay_buffer = MultiTaskReplayBuffer(
            self.num_tasks,
            self.config.buffer_size_per_task,
            self.obs_dim,
            self.action_dim,
            self.device,
        )
        self.iteration = 0
        self.num_timesteps = 0
        self.updates = 0
        self.diagnostics_every = 0
        """Compute gradient norms and cosines at iterations that are multiples of this (0: never)."""
        self._last_obs: np.ndarray | None = None
        self._uniform = torch.full((self.num_tasks,), 1.0 / self.num_tasks, device=self.device)
        # Numerical safety, kept on the device: updates skipped in all, the current and the longest
        # run of consecutive skips, and the tasks and iteration of the last skip.
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self._consecutive_skips = torch.zeros((), dtype=torch.int64, device=self.device)
        self._longest_skip_run = torch.zeros((), dtype=torch.int64, device=self.device)
        self._bad_tasks = torch.zeros(self.num_tasks, dtype=torch.bool, device=self.device)
        self._bad_iteration = torch.zeros((), dtype=torch.int64, device=self.device)
        # The iteration an update belongs to, on the device, so that a captured update reads it.
        self._iteration_on_device = torch.zeros((), dtype=torch.int64, device=self.device)
        self._graph: UpdateGraph | None = None

    # ----------------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------------

    @property
    def combiner(self) -> Combiner:
        return self.combiners["critic"]

    def _net_obs(self, obs: Tensor) -> Tensor:
        return obs if self.config.use_task_id else obs[..., : self.net_obs_dim]

    def _scale_action(self, squashed: np.ndarray) -> np.ndarray:
        return self._action_low + 0.5 * (squashed + 1.0) * (self._action_high - self._action_low)

    def _unscale_action(self, action: np.ndarray) -> np.ndarray:
        return 2.0 * (action - self._action_low) / (self._action_high - self._action_low) - 1.0

    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """SB3's ``predict``: actions for a ``(K, obs_dim)`` batch (or one observation), and ``None``."""
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)
        single = obs.ndim == 1
        if single:
            obs = obs.unsqueeze(0)
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observations must have {self.obs_dim} values, got shape {tuple(obs.shape)}")
        mean, log_std = self.actor(self._net_obs(obs))
        if deterministic:
            squashed = torch.tanh(mean)
        else:
            squashed, _ = squashed_gaussian(mean, log_std, torch.randn_like(mean))
        action = self._scale_action(squashed.cpu().numpy())
        return (action[0] if single else action), None

    # ----------------------------------------------------------------------------------------------
    # Update
    # ----------------------------------------------------------------------------------------------

    def _is_combined(self, group: str) -> bool:
        return group in self.config.combine and not isinstance(self.combiners[group], Mean)

    def update(self, batch: TaskBatch, *, diagnostics: bool = False) -> UpdateStats:
        """One SAC update on a ``(K, B, ...)`` batch: critic, then actor and temperature, then targets."""
        self._iteration_on_device.fill_(self.iteration)
        stats = self._update_tensors(batch, diagnostics)
        self.updates += 1
        return stats

    def _update_tensors(self, batch: TaskBatch, diagnostics: bool) -> UpdateStats:
        """The update as tensor operations only, with its state changed in place: capturable."""
        cfg = self.config
        num_tasks, batch_size = batch.reward.shape
        obs, next_obs = self._net_obs(batch.obs), self._net_obs(batch.next_obs)
        action = torch.as_tensor(batch.action)
        # Noise is drawn here, outside the per-task vmap, so the loss functions are deterministic.
        noise = torch.randn((2, num_tasks, batch_size, self.action_dim), device=obs.device)
        alpha = self.log_alpha.detach().exp().expand(num_tasks).unsqueeze(1)  # (K, 1)
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
        critic_params = dict(self.critic.named_parameters())
        critic_batch = (obs, action, target)

        def critic_loss_fn(params: dict[str, Tensor] | None, task: tuple[Tensor, ...]) -> Tensor:
            return critic_losses(self.critic, params, *task)

        self.critic_optimizer.zero_grad(set_to_none=False)
        critic = self._backward("critic", critic_loss_fn, critic_params, critic_batch, diagnostics)
        critic_ok = _guarded_step(self.critic_optimizer, critic.losses)
        if self._is_combined("critic") and uses_after_step(self.combiners["critic"]):
            with torch.no_grad():  # FAMO-style methods learn from the loss change on the same batch.
                self.combiners["critic"].after_step(critic_losses(self.critic, critic_params, *critic_batch))

        # Actor: the critic is held fixed (detached parameters) while the actor moves.
        actor_params = dict(self.actor.named_parameters())
        frozen_critic = {name: p.detach() for name, p in critic_params.items()}
        actor_batch = (obs, noise[1], alpha)

        def actor_loss_fn(
            params: dict[str, Tensor] | None, task: tuple[Tensor, ...]
        ) -> tuple[Tensor, Tensor]:
            # The plain path (params None) calls the modules themselves; its backward pass is then
            # restricted to the actor's parameters, which holds the critic fixed just the same.
            critic_params = None if params is None else frozen_critic
            return actor_losses(self.actor, params, self.critic, critic_params, *task)

        self.actor_optimizer.zero_grad(set_to_none=False)
        actor, mean_log_prob = self._backward_with_aux(
            "actor", actor_loss_fn, actor_params, actor_batch, diagnostics
        )
        update_ok = _guarded_step(self.actor_optimizer, actor.losses, critic_ok)
        if self._is_combined("actor") and uses_after_step(self.combiners["actor"]):
            with torch.no_grad():
                self.combiners["actor"].after_step(actor_loss_fn(actor_params, actor_batch)[0])

        # Temperature: d loss_k / d log α = −(mean log π_k + target entropy), so no autograd needed.
        self.temperature_optimizer.zero_grad(set_to_none=False)
        task_grads = -(mean_log_prob + self.target_entropy)  # (K,)
        temp_losses = temperature_losses(self.log_alpha.detach(), mean_log_prob, self.target_entropy)
        if not cfg.shared_temperature:
            self.log_alpha.grad = task_grads  # each task's temperature follows its own loss
        elif self._is_combined("temperature"):
            write_combined_grad(
                self.combiners["temperature"], [self.log_alpha], [task_grads.unsqueeze(1)], losses=temp_losses
            )
        else:
            self.log_alpha.grad = task_grads.mean().reshape(1)
        update_ok = _guarded_step(self.temperature_optimizer, mean_log_prob, update_ok)
        if self._is_combined("temperature") and uses_after_step(self.combiners["temperature"]):
            self.combiners["temperature"].after_step(
                temperature_losses(self.log_alpha.detach(), mean_log_prob, self.target_entropy)
            )

        polyak_update(self.critic.parameters(), self.critic_target.parameters(), cfg.tau)
        self._count_skip(update_ok, critic.losses, actor.losses)
        return UpdateStats(
            critic_loss=critic.losses,
            actor_loss=actor.losses,
            temperature=self.log_alpha.detach().exp().expand(num_tasks).clone(),
            critic_weights=critic.weights,
            actor_weights=actor.weights,
            critic_grad_norms=critic.grad_norms,
            critic_cosine=_mean_pairwise(critic.cosine),
            actor_grad_norms=actor.grad_norms,
            actor_cosine=_mean_pairwise(actor.cosine),
            finite=update_ok,
        )

    def _count_skip(self, ok: Tensor, critic_loss: Tensor, actor_loss: Tensor) -> None:
        """Book-keeping of skipped updates, as in-place tensor ops (no host synchronisation, and a
        captured update's replays carry it from one to the next)."""
        self._skipped += (~ok).long()
        self._consecutive_skips.copy_(torch.where(ok, 0, self._consecutive_skips + 1))
        torch.maximum(self._longest_skip_run, self._consecutive_skips, out=self._longest_skip_run)
        bad = ~(torch.isfinite(critic_loss) & torch.isfinite(actor_loss))
        self._bad_tasks.copy_(torch.where(ok, self._bad_tasks, bad))
        self._bad_iteration.copy_(torch.where(ok, self._bad_iteration, self._iteration_on_device))

    @property
    def skipped_updates(self) -> int:
        """Updates skipped because a loss or gradient was not finite (reads from the device)."""
        return int(self._skipped.item())

    def check_numerics(self) -> None:
        """Raise :class:`NonFiniteUpdateError` once ``max_consecutive_skips`` updates in a row were skipped.

        It reads three numbers back from the device, so the training loop calls it every so many
        iterations rather than after each update; the longest run of skips is tracked on the device
        in between, so none is missed.
        """
        limit = self.config.max_consecutive_skips
        if int(self._longest_skip_run.item()) < limit:
            return
        tasks = [name for name, bad in zip(self.task_names, self._bad_tasks.tolist(), strict=True) if bad]
        where = f"task(s) {', '.join(tasks)}" if tasks else "gradients of finite losses"
        raise NonFiniteUpdateError(
            f"{limit} consecutive updates had non-finite losses or gradients ({where}, last at iteration "
            f"{int(self._bad_iteration.item())}); no weight was changed by them, and training stopped. "
            "Check the rewards and observations, lower the learning rates, or resume from the last checkpoint"
        )

    def _backward(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], Tensor],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        diagnostics: bool,
    ) -> CombinedGradient:
        def with_aux(p: dict[str, Tensor] | None, task: Any) -> tuple[Tensor, Tensor]:
            loss = loss_fn(p, task)
            return loss, loss.detach()

        result, _ = self._backward_with_aux(group, with_aux, params, task_batch, diagnostics)
        return result

    def _backward_with_aux(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], tuple[Tensor, Tensor]],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        diagnostics: bool,
    ) -> tuple[CombinedGradient, Tensor]:
        """Write ``.grad`` of ``params`` from per-task losses; return the result and the aux output."""
        if self._is_combined(group) or diagnostics:
            combiner = self.combiners[group] if self._is_combined(group) else Mean()
            return backward_per_task_func(
                loss_fn,
                params,
                task_batch,
                combiner,
                diagnostics=diagnostics,
                chunk_size=self.config.chunk_size,
                randomness="error",
                has_aux=True,
            )
        # Plain path: the K task losses from one batched forward, one backward of their mean. The
        # modules are called directly (params None): functional_call's Python overhead is a large
        # part of a small update on a GPU.
        losses, aux = loss_fn(None, task_batch)
        losses.mean().backward(inputs=list(params.values()))
        return CombinedGradient(losses.detach(), self._uniform), aux

    # ----------------------------------------------------------------------------------------------
    # Training loop
    # ----------------------------------------------------------------------------------------------

    def learn(
        self,
        total_timesteps: int,
        callback: LearnCallback | None = None,
        progress_bar: bool = False,
    ) -> MTSAC:
        """Train for ``total_timesteps`` environment steps (``ceil(total_timesteps / K)`` iterations).

        As in SB3, timesteps count every sub-env step, so one iteration is ``K`` timesteps. Calling
        ``learn`` again continues where the last call stopped. ``callback(agent, step)`` runs after
        every iteration; returning ``False`` stops training.
        """
        if self.env is None:
            raise ValueError("this agent has no env: pass one to MTSAC(...) or MTSAC.load(path, env=...)")
        if total_timesteps < 0:
            raise ValueError(f"total_timesteps must be >= 0, got {total_timesteps}")
        # Imported here so that the update maths above stays free of environment code.
        from mtrl_fair.envs import final_observations

        iterations = math.ceil(total_timesteps / self.num_tasks)
        env, cfg = self.env, self.config
        if self._last_obs is None:
            self._last_obs, _ = env.reset(seed=self.seed + self.iteration)
        progress = _Progress(iterations) if progress_bar else None
        collector = ThreadPoolExecutor(max_workers=1) if cfg.overlap_env_steps else None
        try:
            for _ in range(iterations):
                # 1. Collect: one step of every task's env (in the background while this iteration
                #    updates, with overlap_env_steps).
                obs = self._last_obs
                if self.iteration < cfg.warmup_steps:
                    action = env.action_space.sample()
                else:
                    action, _ = self.predict(obs, deterministic=False)
                updating = self.iteration + 1 > cfg.warmup_steps
                stats = None
                if collector is not None and updating:
                    stepping = collector.submit(env.step, action)
                    stats = self._update_from_buffer(self.iteration + 1)
                    next_obs, reward, terminated, truncated, info = stepping.result()
                else:
                    next_obs, reward, terminated, truncated, info = env.step(action)
                # 2. Store: the true last observation of an episode that just ended, not the reset one.
                real_next_obs = final_observations(next_obs, np.logical_or(terminated, truncated), info)
                self.replay_buffer.add(obs, self._unscale_action(action), reward, real_next_obs, terminated)
                self._last_obs = next_obs
                self.iteration += 1
                self.num_timesteps += self.num_tasks
                # 3. Update: one per iteration once the warm-up is over.
                if updating and stats is None:
                    stats = self._update_from_buffer(self.iteration)
                if progress is not None:
                    progress.advance()
                if (
                    callback is not None
                    and callback(self, StepResult(self.iteration, reward, terminated, truncated, info, stats))
                    is False
                ):
                    break
            if self.updates:
                self.check_numerics()
        finally:
            if collector is not None:
                collector.shutdown(wait=True)
            if progress is not None:
                progress.close()
        return self

    def _update_from_buffer(self, iteration: int) -> UpdateStats:
        """The update of ``iteration``: a fresh batch, diagnostics when due, a periodic numerics check."""
        batch = self.replay_buffer.sample(self.config.batch_size_per_task)
        due = self.diagnostics_every > 0 and iteration % self.diagnostics_every == 0
        self._iteration_on_device.fill_(iteration)
        if self._use_graph and not due:
            stats = self._graphed_update(batch)
        else:
            stats = self._update_tensors(batch, due)
        self.updates += 1
        if iteration % _NUMERICS_CHECK_EVERY == 0:
            self.check_numerics()
        return stats

    def _graphed_update(self, batch: TaskBatch) -> UpdateStats:
        """The update through its CUDA graph: warm up, capture once, then replay."""
        if self._graph is None:
            self._graph = UpdateGraph(self.device)
        graph = self._graph
        if graph.failed:
            return self._update_tensors(batch, False)
        if graph.warm_ups < _GRAPH_WARMUP_UPDATES:  # also after a resume: this process has not run one
            return graph.warm_up(lambda: self._update_tensors(batch, False))
        if graph.stats is None and not graph.capture(batch, self._update_tensors, self.combiners.values()):
            warnings.warn(
                f"the update with {self.combiners['critic']!r} could not be captured in a CUDA graph "
                f"({graph.failure}); training goes on with the eager update",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._update_tensors(batch, False)
        return graph.replay(batch)

    # ----------------------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild this agent, as plain JSON-able values."""
        name, hparams = combiner_spec(self.combiners["critic"])
        return {
            "num_tasks": self.num_tasks,
            "obs_dim": self.obs_dim,
            "action_low": self._action_low.tolist(),
            "action_high": self._action_high.tolist(),
            "task_names": list(self.task_names),
            "config": dataclasses.asdict(self.config),
            "combiner": name,
            "combiner_kwargs": hparams,
            "seed": self.seed,
        }

    def state_dict(self, *, include_replay_buffer: bool = False) -> dict[str, Any]:
        """All tensors and counters of the agent (loadable with ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "metadata": self.metadata(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "combiners": {group: c.state_dict() for group, c in self.combiners.items()},
            "counters": {
                "iteration": self.iteration,
                "num_timesteps": self.num_timesteps,
                "updates": self.updates,
            },
        }
        if include_replay_buffer:
            state["replay_buffer"] = self.replay_buffer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the replay buffer too, if it was included)."""
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        for group, combiner in self.combiners.items():
            combiner.load_state_dict(state["combiners"][group])
        counters = state["counters"]
        self.iteration = int(counters["iteration"])
        self.num_timesteps = int(counters["num_timesteps"])
        self.updates = int(counters["updates"])
        self._graph = None  # the restored tensors are new ones: capture again
        if "replay_buffer" in state:
            self.replay_buffer.load_state_dict(state["replay_buffer"])
        self._last_obs = None  # simulator states are not saved: the next learn() starts new episodes

    def save(self, path: str | os.PathLike[str], *, include_replay_buffer: bool = False) -> None:
        """Write the agent to ``path`` atomically (a temporary file, fsync, then rename)."""
        from mtrl_fair.agents.checkpoint import save_checkpoint

        save_checkpoint(self.state_dict(include_replay_buffer=include_replay_buffer), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], env: Any = None, device: str | torch.device = "auto"
    ) -> MTSAC:
        """Rebuild an agent saved by :meth:`save`. Only tensors and plain values are unpickled."""
        from mtrl_fair.agents.checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location="cpu")
        agent = cls.from_metadata(state["metadata"], env=env, device=device)
        agent.load_state_dict(state)
        return agent

    @classmethod
    def from_metadata(
        cls, metadata: dict[str, Any], env: Any = None, device: str | torch.device = "auto"
    ) -> MTSAC:
        """A fresh agent with the shapes, hyperparameters and combiner recorded in ``metadata``."""
        from gymnasium.spaces import Box

        num_tasks = int(metadata["num_tasks"])
        observation_space = Box(-np.inf, np.inf, (int(metadata["obs_dim"]),), np.float64)
        action_space = Box(
            np.asarray(metadata["action_low"], np.float32), np.asarray(metadata["action_high"], np.float32)
        )
        if env is not None:
            expected = (num_tasks, observation_space.shape, action_space.shape)
            got = (env.num_envs, env.single_observation_space.shape, env.single_action_space.shape)
            if got != expected:
                raise ValueError(
                    f"the env has (tasks, obs shape, action shape) = {got}, the saved agent {expected}"
                )
        return cls(
            env,
            combiner=metadata["combiner"],
            combiner_kwargs=metadata["combiner_kwargs"],
            config=MTSACConfig(**metadata["config"]),
            device=device,
            seed=int(metadata["seed"]),
            num_tasks=num_tasks,
            observation_space=observation_space,
            action_space=action_space,
            task_names=list(metadata["task_names"]),
        )

    def __repr__(self) -> str:
        return (
            f"MTSAC(tasks={self.num_tasks}, combiner={self.combiners['critic']!r}, "
            f"combine={list(self.config.combine)}, device={self.device})"
        )


# Eager updates before the capture: they allocate the optimizers' state and warm up cuBLAS, Triton
# and the allocator on a side stream, as CUDA graph capture requires.
_GRAPH_WARMUP_UPDATES = 3


class UpdateGraph:
    """One update recorded as a CUDA graph: static batch tensors in, static statistics out.

    Everything the update changes (weights, optimizer moments and steps, target networks,
    temperatures, skip counters, combiner state) is changed in place, so each replay continues
    from the last. The batch is sampled outside the graph (the buffer's fill level changes every
    iteration) and copied into the static tensors. The statistics returned by :meth:`replay` are the
    same tensors every time, overwritten by the next replay.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch: TaskBatch | None = None
        self.stats: UpdateStats | None = None
        self.failed = False
        self.failure = ""
        self.warm_ups = 0
        self._side_stream: torch.cuda.Stream | None = None

    def warm_up(self, update: Callable[[], UpdateStats]) -> UpdateStats:
        """Run one eager update on a side stream (a real update, not a rehearsal)."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            stats = update()
        current.wait_stream(self._side_stream)
        self.warm_ups += 1
        return stats

    def capture(
        self,
        batch: TaskBatch,
        update: Callable[[TaskBatch, bool], UpdateStats],
        combiners: Iterable[Combiner],
    ) -> bool:
        """Record ``update`` on static copies of ``batch``; False (and ``failure``) if it cannot be."""
        self.batch = TaskBatch(*(tensor.clone() for tensor in batch))
        graph = torch.cuda.CUDAGraph()
        for combiner in combiners:  # a combiner's own generator (PCGrad) must advance on each replay
            generator = getattr(combiner, "generator", None)
            if callable(generator):
                graph.register_generator_state(generator(self.device))
        try:
            with torch.cuda.graph(graph):
                self.stats = update(self.batch, False)
        except Exception as error:  # any failure falls back to the eager update, with its reason
            self.failed, self.failure = True, (str(error).splitlines() or [type(error).__name__])[0]
            self.stats = None
            return False
        self.graph = graph
        return True

    def replay(self, batch: TaskBatch) -> UpdateStats:
        assert self.graph is not None
        assert self.batch is not None
        assert self.stats is not None
        for static, fresh in zip(self.batch, batch, strict=True):
            static.copy_(fresh)
        self.graph.replay()
        return self.stats


class NonFiniteUpdateError(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients."""


def _guarded_step(
    optimizer: torch.optim.Optimizer, losses: Tensor, earlier_ok: Tensor | None = None
) -> Tensor:
    """``optimizer.step()`` unless a loss or a gradient is not finite; return the 0-d "finite" flag.

    ``earlier_ok`` chains the steps of one update: once a step was skipped, the later ones are
    skipped too, so an update is applied whole or not at all. The check and the skip both stay on
    the device: fused Adam reads ``found_inf`` and leaves the parameters, moments and step count
    untouched when it is set.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norms = torch.stack(torch._foreach_norm(grads)) if grads else losses.new_zeros(1)
    finite = torch.isfinite(losses).all() & torch.isfinite(grad_norms).all()
    if earlier_ok is not None:
        finite = finite & earlier_ok
    optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
    optimizer.step()
    return finite


def _mean_pairwise(cosine: Tensor | None) -> Tensor | None:
    """Mean of the off-diagonal entries of a ``(K, K)`` cosine matrix (0 when K = 1)."""
    if cosine is None:
        return None
    num_tasks = cosine.shape[0]
    if num_tasks < 2:
        return cosine.new_zeros(())
    return (cosine.sum() - cosine.diagonal().sum()) / (num_tasks * (num_tasks - 1))


class _Progress:
    """A rich progress bar of iterations with their rate (for ``learn(progress_bar=True)``)."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]MTSAC"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task("train", total=total, rate="")
        self._start, self._done = time.perf_counter(), 0
        self._bar.start()

    def advance(self) -> None:
        self._done += 1
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(self._task, advance=1, rate=f"{rate:,.0f} it/s")

    def close(self) -> None:
        self._bar.stop()
