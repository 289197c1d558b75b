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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import torch

from mtrl_fair.agents.buffer import MultiTaskReplayBuffer, TaskBatch
from mtrl_fair.agents.checkpoint import load_checkpoint, save_checkpoint
from mtrl_fair.agents.config import LOSS_GROUPS, MTSACConfig
from mtrl_fair.agents.cuda_graph import UpdateGraph
from mtrl_fair.agents.device import resolve_device, resolve_switch
from mtrl_fair.agents.networks import Actor, TwinCritic, squashed_gaussian
from mtrl_fair.agents.progress import ProgressBar
from mtrl_fair.agents.sac_update import SACUpdate
from mtrl_fair.agents.spaces import TaskSpaces
from mtrl_fair.agents.stats import StepResult, UpdateStats
from mtrl_fair.combiners import Combiner, make

__all__ = ["MTSAC", "LearnCallback"]

CHECKPOINT_FORMAT = "mtrl-fair/mtsac"
CHECKPOINT_VERSION = 1
_NUMERICS_CHECK_EVERY = 100
"""Iterations between the host-side checks of skipped updates (each check reads from the device)."""

LearnCallback = Callable[["MTSAC", StepResult], "bool | None"]


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

    update_class: ClassVar[type[SACUpdate]] = SACUpdate
    """The update step; a subclass may swap it (the benchmarks time a reference update this way)."""

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
            self.spaces = TaskSpaces.from_env(env, task_names)
        elif num_tasks is None or observation_space is None or action_space is None:
            raise ValueError("MTSAC needs an env, or num_tasks, observation_space and action_space")
        else:
            self.spaces = TaskSpaces.from_spaces(int(num_tasks), observation_space, action_space, task_names)
        self.num_tasks = self.spaces.num_tasks
        self.task_names = list(self.spaces.task_names)
        self.obs_dim, self.action_dim = self.spaces.obs_dim, self.spaces.action_dim
        # SB3's attributes: one task's spaces.
        self.observation_space = env.single_observation_space if env is not None else observation_space
        self.action_space = env.single_action_space if env is not None else action_space
        # The networks see the state part only when use_task_id is off (the one-hot is the tail).
        self.net_obs_dim = self.obs_dim if self.config.use_task_id else self.obs_dim - self.num_tasks
        if self.net_obs_dim < 1:
            raise ValueError(
                f"observations of size {self.obs_dim} cannot end with a {self.num_tasks}-task one-hot id"
            )

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
        self.use_cuda_graph = resolve_switch(self.config.cuda_graph, self.device) and self.device.type == "cuda"
        self.overlap_env_steps = resolve_switch(self.config.overlap_env_steps, self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(self.config.matmul_precision)
        capturable = self.use_cuda_graph
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
        self._update = self.update_class(
            config=self.config,
            actor=self.actor,
            critic=self.critic,
            critic_target=self.critic_target,
            log_alpha=self.log_alpha,
            actor_optimizer=self.actor_optimizer,
            critic_optimizer=self.critic_optimizer,
            temperature_optimizer=self.temperature_optimizer,
            combiners=self.combiners,
            num_tasks=self.num_tasks,
            net_obs_dim=self.net_obs_dim,
            action_dim=self.action_dim,
            target_entropy=self.target_entropy,
        )
        self._graph: UpdateGraph | None = None

    # ----------------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------------

    @property
    def combiner(self) -> Combiner:
        return self.combiners["critic"]

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
        mean, log_std = self.actor(self._update.net_obs(obs))
        if deterministic:
            squashed = torch.tanh(mean)
        else:
            squashed, _ = squashed_gaussian(mean, log_std, torch.randn_like(mean))
        action = self.spaces.scale_action(squashed.cpu().numpy())
        return (action[0] if single else action), None

    # ----------------------------------------------------------------------------------------------
    # Update
    # ----------------------------------------------------------------------------------------------

    def update(self, batch: TaskBatch, *, diagnostics: bool = False) -> UpdateStats:
        """One SAC update on a ``(K, B, ...)`` batch: critic, then actor and temperature, then targets."""
        self._update.iteration.fill_(self.iteration)
        stats = self._update(batch, diagnostics)
        self.updates += 1
        return stats

    @property
    def skipped_updates(self) -> int:
        """Updates skipped because a loss or gradient was not finite (reads from the device)."""
        return self._update.skips.total

    def check_numerics(self) -> None:
        """Raise :class:`~mtrl_fair.agents.numerics.NonFiniteUpdateError` once
        ``max_consecutive_skips`` updates in a row were skipped.

        It reads three numbers back from the device, so the training loop calls it every so many
        iterations rather than after each update; the longest run of skips is tracked on the device
        in between, so none is missed.
        """
        self._update.skips.check(self.config.max_consecutive_skips, self.task_names)

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
        progress = ProgressBar(iterations, label="MTSAC") if progress_bar else None
        collector = ThreadPoolExecutor(max_workers=1) if self.overlap_env_steps else None
        try:
            for done in range(1, iterations + 1):
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
                self.replay_buffer.add(obs, self.spaces.unscale_action(action), reward, real_next_obs, terminated)
                self._last_obs = next_obs
                self.iteration += 1
                self.num_timesteps += self.num_tasks
                # 3. Update: one per iteration once the warm-up is over.
                if updating and stats is None:
                    stats = self._update_from_buffer(self.iteration)
                if progress is not None:
                    progress.update(done)
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
        self._update.iteration.fill_(iteration)
        if self.use_cuda_graph and not due:
            stats = self._graphed_update(batch)
        else:
            stats = self._update(batch, due)
        self.updates += 1
        if iteration % _NUMERICS_CHECK_EVERY == 0:
            self.check_numerics()
        return stats

    def _graphed_update(self, batch: TaskBatch) -> UpdateStats:
        """The update through its CUDA graph (:class:`~mtrl_fair.agents.cuda_graph.UpdateGraph`)."""
        if self._graph is None:
            self._graph = UpdateGraph(self.device)
        # A combiner's own generator (PCGrad's) must advance on each replay.
        generators = [
            combiner.generator(self.device)  # type: ignore[attr-defined]
            for combiner in self.combiners.values()
            if callable(getattr(combiner, "generator", None))
        ]
        return self._graph.run(batch, self._update, generators, repr(self.combiners["critic"]))

    # ----------------------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild this agent, as plain JSON-able values."""
        name, hparams = self.combiners["critic"].spec()
        return {
            **self.spaces.metadata(),
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
        save_checkpoint(self.state_dict(include_replay_buffer=include_replay_buffer), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], env: Any = None, device: str | torch.device = "auto"
    ) -> MTSAC:
        """Rebuild an agent saved by :meth:`save`. Only tensors and plain values are unpickled."""
        state = load_checkpoint(path, map_location="cpu")
        agent = cls.from_metadata(state["metadata"], env=env, device=device)
        agent.load_state_dict(state)
        return agent

    @classmethod
    def from_metadata(
        cls, metadata: dict[str, Any], env: Any = None, device: str | torch.device = "auto"
    ) -> MTSAC:
        """A fresh agent with the shapes, hyperparameters and combiner recorded in ``metadata``."""
        spaces = TaskSpaces.from_metadata(metadata)
        if env is not None:
            spaces.check_env(env)
        return cls(
            env,
            combiner=metadata["combiner"],
            combiner_kwargs=metadata["combiner_kwargs"],
            config=MTSACConfig(**metadata["config"]),
            device=device,
            seed=int(metadata["seed"]),
            num_tasks=spaces.num_tasks,
            observation_space=spaces.observation_space,
            action_space=spaces.action_space,
            task_names=list(spaces.task_names),
        )

    def __repr__(self) -> str:
        return (
            f"MTSAC(tasks={self.num_tasks}, combiner={self.combiners['critic']!r}, "
            f"combine={list(self.config.combine)}, device={self.device})"
        )
