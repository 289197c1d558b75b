"""Several runs of multi-task SAC trained as one: R seeds (and FairGrad α values) at the cost of about one.

A GPU update of one run is bound by kernel launches, not arithmetic, so R runs whose networks are
stacked into the same kernels cost little more than one. :class:`PackedMTSAC` trains R runs of the
same tasks, networks and hyperparameters, each with its own seed, envs, replay buffer, temperatures,
optimizer moments and combiner (FairGrad with its own α; α = 0 is the mean), in one batched update.

Each run computes what it computes alone with :class:`~mtrl_fair.agents.mtsac.MTSAC`: its networks
are initialised from its seed as the solo agent's are, it draws from its own random generators in
the solo agent's order, and every product of the packed networks is the solo product batched with
the others (see :mod:`mtrl_fair.agents.packed_networks`). :meth:`PackedMTSAC.run` gives a run as an
agent of its own (``predict``, ``state_dict`` in the solo checkpoint format), which is what a
training run's logging, checkpoints and evaluations use.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mtrl_fair.agents.buffer import TaskBatch
from mtrl_fair.agents.config import LOSS_GROUPS, MTSACConfig
from mtrl_fair.agents.cuda_graph import UpdateGraph
from mtrl_fair.agents.device import resolve_device, resolve_switch
from mtrl_fair.agents.mtsac import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from mtrl_fair.agents.networks import Actor, TwinCritic, squashed_gaussian
from mtrl_fair.agents.packed_buffer import PackedReplayBuffer
from mtrl_fair.agents.packed_networks import load_member_state_dict, member_state_dict, pack_modules
from mtrl_fair.agents.packed_state import member_optimizer_state, stack_optimizer_states
from mtrl_fair.agents.packed_update import PackedSACUpdate
from mtrl_fair.agents.progress import ProgressBar
from mtrl_fair.agents.spaces import TaskSpaces
from mtrl_fair.agents.stats import StepResult, UpdateStats
from mtrl_fair.combiners import Combiner, make

__all__ = ["PACKABLE_COMBINERS", "PackedMTSAC", "PackedRun", "RunSpec"]

PACKABLE_COMBINERS = ("mean", "fairgrad")
"""Combiners whose solve is a pure function of each run's Gram matrix, with no state across updates."""
_NUMERICS_CHECK_EVERY = 100


class RunSpec(NamedTuple):
    """What one run of a pack has of its own: its seed and its combiner's hyperparameters (e.g. α)."""

    seed: int
    combiner_kwargs: dict[str, Any]


class PackedMTSAC:
    """R runs of :class:`~mtrl_fair.agents.mtsac.MTSAC` in one batched update.

    Args:
        envs: one vector env per run (one sub-env per task), each built as the run would build it
            alone (its own seed); they may be ``None`` for a pack used only to update.
        runs: each run's seed and combiner hyperparameters, in order.
        combiner: the registry name of the runs' combiner (one of :data:`PACKABLE_COMBINERS`).
        config: the SAC hyperparameters, the same for every run.
        device, task_names, spaces: as for ``MTSAC`` (``spaces`` when there are no envs).
    """

    def __init__(
        self,
        envs: Sequence[Any] | None,
        runs: Sequence[RunSpec],
        *,
        combiner: str,
        config: MTSACConfig | None = None,
        device: str | torch.device = "auto",
        task_names: Sequence[str] | None = None,
        spaces: TaskSpaces | None = None,
    ) -> None:
        if combiner not in PACKABLE_COMBINERS:
            raise ValueError(
                f"combiner {combiner!r} cannot be packed (its solve is stateful or a loop); "
                f"packable combiners: {', '.join(PACKABLE_COMBINERS)}"
            )
        if not runs:
            raise ValueError("a pack needs at least one run")
        if envs is not None and len(envs) != len(runs):
            raise ValueError(f"a pack of {len(runs)} runs needs one env per run, got {len(envs)}")
        self.config = copy.deepcopy(config) if config is not None else MTSACConfig()
        self.config.validate()
        self.device = resolve_device(device)
        self.runs = list(runs)
        self.envs = list(envs) if envs is not None else None
        self.combiner_name = combiner
        if self.envs is not None:
            spaces = TaskSpaces.from_env(self.envs[0], task_names)
            for env in self.envs[1:]:
                spaces.check_env(env)
        if spaces is None:
            raise ValueError("PackedMTSAC needs envs, or the task spaces")
        self.spaces = spaces
        self.num_tasks, self.task_names = spaces.num_tasks, list(spaces.task_names)
        self.obs_dim, self.action_dim = spaces.obs_dim, spaces.action_dim
        self.net_obs_dim = self.obs_dim if self.config.use_task_id else self.obs_dim - self.num_tasks
        count = len(self.runs)
        hidden = [int(h) for h in self.config.hidden_sizes]

        # Each run as MTSAC builds it alone: seed, action space, then the networks, from the same
        # generator; the run keeps drawing from where its networks left the generator.
        actors, critics, self.generators = [], [], []
        for run_index, spec in enumerate(self.runs):
            torch.manual_seed(spec.seed)
            if self.envs is not None:
                self.envs[run_index].action_space.seed(spec.seed)
            actors.append(Actor(self.net_obs_dim, self.action_dim, hidden))
            critics.append(TwinCritic(self.net_obs_dim, self.action_dim, hidden))
            generator = torch.Generator(self.device)
            if self.device.type == "cpu":
                generator.set_state(torch.get_rng_state())
            else:  # the networks are made on the CPU: the device's generator is untouched
                generator.manual_seed(spec.seed)
            self.generators.append(generator)
        self._solo_shapes = {
            "actor": [p.shape for p in actors[0].parameters()],
            "critic": [p.shape for p in critics[0].parameters()],
            "temperature": [torch.Size([1 if self.config.shared_temperature else self.num_tasks])],
        }
        actor, critic = pack_modules(actors, critics, hidden)
        self.actor, self.critic = actor.to(self.device), critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        temperatures = 1 if self.config.shared_temperature else self.num_tasks
        self.log_alpha = torch.full(
            (count, temperatures), math.log(self.config.initial_temperature), device=self.device, requires_grad=True
        )
        self.target_entropy = (
            float(-self.action_dim) if self.config.target_entropy is None else float(self.config.target_entropy)
        )
        self.use_cuda_graph = resolve_switch(self.config.cuda_graph, self.device) and self.device.type == "cuda"
        self.overlap_env_steps = resolve_switch(self.config.overlap_env_steps, self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(self.config.matmul_precision)
        adam = {"fused": True, "capturable": self.use_cuda_graph}
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr, **adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr, **adam)
        self.temperature_optimizer = torch.optim.Adam([self.log_alpha], lr=self.config.temperature_lr, **adam)
        self.member_combiners: dict[str, list[Combiner]] = {
            group: [make(combiner, **spec.combiner_kwargs) for spec in self.runs] for group in LOSS_GROUPS
        }
        self.replay_buffer = PackedReplayBuffer(
            count, self.num_tasks, self.config.buffer_size_per_task, self.obs_dim, self.action_dim, self.device
        )
        self.iteration = self.num_timesteps = self.updates = 0
        self.diagnostics_every = 0
        self._last_obs: np.ndarray | None = None
        self._update = PackedSACUpdate(
            config=self.config,
            actor=self.actor,
            critic=self.critic,
            critic_target=self.critic_target,
            log_alpha=self.log_alpha,
            actor_optimizer=self.actor_optimizer,
            critic_optimizer=self.critic_optimizer,
            temperature_optimizer=self.temperature_optimizer,
            member_combiners=self.member_combiners,
            generators=self.generators,
            num_tasks=self.num_tasks,
            net_obs_dim=self.net_obs_dim,
            action_dim=self.action_dim,
            target_entropy=self.target_entropy,
        )
        self._graph: UpdateGraph | None = None

    def __len__(self) -> int:
        return len(self.runs)

    def run(self, index: int) -> PackedRun:
        """Run ``index`` as an agent of its own (for logging, checkpoints and evaluation)."""
        return PackedRun(self, index)

    # Acting ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        """Actions ``(R, n, action_dim)`` for observations ``(R, n, obs_dim)``, each run with its own
        actor and, when sampling, its own generator."""
        mean, log_std = self.policy(observations)
        if deterministic:
            squashed = torch.tanh(mean)
        else:
            noise = torch.stack(
                [torch.randn(mean.shape[1:], device=self.device, generator=generator) for generator in self.generators]
            )
            squashed, _ = squashed_gaussian(mean, log_std, noise)
        return self.spaces.scale_action(squashed.cpu().numpy())

    def policy(self, observations: np.ndarray) -> tuple[Tensor, Tensor]:
        """The runs' Gaussian policies ``(mean, log_std)`` for observations ``(R, n, obs_dim)``."""
        obs = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=self.device)
        return self.actor(self._update.net_obs(obs))

    # Update ---------------------------------------------------------------------------------------

    def update(self, batch: TaskBatch, *, diagnostics: bool = False) -> UpdateStats:
        """One update of every run on a ``(R, K, B, ...)`` batch."""
        self._update.iteration.fill_(self.iteration)
        stats = self._update(batch, diagnostics)
        self.updates += 1
        return stats

    @property
    def skipped_updates(self) -> int:
        return self._update.skips.total

    def check_numerics(self) -> None:
        names = [f"run {i} ({spec.seed}) {task}" for i, spec in enumerate(self.runs) for task in self.task_names]
        self._update.skips.check(self.config.max_consecutive_skips, names)

    def _update_from_buffer(self, iteration: int) -> UpdateStats:
        batch = self.replay_buffer.sample(self.config.batch_size_per_task, self.generators)
        due = self.diagnostics_every > 0 and iteration % self.diagnostics_every == 0
        self._update.iteration.fill_(iteration)
        if self.use_cuda_graph and not due:
            if self._graph is None:
                self._graph = UpdateGraph(self.device)
            stats = self._graph.run(batch, self._update, self.generators, f"a pack of {len(self.runs)}")
        else:
            stats = self._update(batch, due)
        self.updates += 1
        if iteration % _NUMERICS_CHECK_EVERY == 0:
            self.check_numerics()
        return stats

    # Training loop ----------------------------------------------------------------------------------

    def _step_envs(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """One step of every run's envs; async envs step at once, each in its own processes."""
        assert self.envs is not None
        if all(isinstance(env, gym.vector.AsyncVectorEnv) for env in self.envs):
            for env, action in zip(self.envs, actions, strict=True):
                env.step_async(action)
            results = [env.step_wait() for env in self.envs]
        else:
            results = [env.step(action) for env, action in zip(self.envs, actions, strict=True)]
        next_obs, reward, terminated, truncated, infos = zip(*results, strict=True)
        return np.stack(next_obs), np.stack(reward), np.stack(terminated), np.stack(truncated), list(infos)

    def learn(
        self,
        iterations: int,
        callbacks: Sequence[Callable[[PackedRun, StepResult], bool | None]] = (),
        progress_bar: bool = False,
    ) -> PackedMTSAC:
        """Train every run for ``iterations`` iterations, as :meth:`MTSAC.learn` trains one.

        ``callbacks[i](pack.run(i), step)`` runs after every iteration for run ``i``; training
        stops after an iteration where any of them returns ``False``.
        """
        if self.envs is None:
            raise ValueError("this pack has no envs: pass them to PackedMTSAC(...)")
        from mtrl_fair.envs import final_observations  # as in MTSAC.learn: the update maths stays env-free

        cfg, envs = self.config, self.envs
        if self._last_obs is None:
            self._last_obs = np.stack(
                [env.reset(seed=spec.seed + self.iteration)[0] for env, spec in zip(envs, self.runs, strict=True)]
            )
        progress = ProgressBar(iterations, label=f"pack of {len(self.runs)}") if progress_bar else None
        collector = ThreadPoolExecutor(max_workers=1) if self.overlap_env_steps else None
        try:
            for done in range(1, iterations + 1):
                obs = self._last_obs
                if self.iteration < cfg.warmup_steps:
                    actions = np.stack([env.action_space.sample() for env in envs])
                else:
                    actions = self.act(obs, deterministic=False)
                updating = self.iteration + 1 > cfg.warmup_steps
                stats = None
                if collector is not None and updating:
                    stepping = collector.submit(self._step_envs, actions)
                    stats = self._update_from_buffer(self.iteration + 1)
                    next_obs, reward, terminated, truncated, infos = stepping.result()
                else:
                    next_obs, reward, terminated, truncated, infos = self._step_envs(actions)
                ended = np.logical_or(terminated, truncated)
                real_next_obs = np.stack(
                    [final_observations(next_obs[i], ended[i], infos[i]) for i in range(len(self.runs))]
                )
                self.replay_buffer.add(
                    obs=obs,
                    action=self.spaces.unscale_action(actions),
                    reward=reward,
                    next_obs=real_next_obs,
                    terminated=terminated,
                )
                self._last_obs = next_obs
                self.iteration += 1
                self.num_timesteps += self.num_tasks
                if updating and stats is None:
                    stats = self._update_from_buffer(self.iteration)
                if progress is not None:
                    progress.update(done)
                carry_on = True
                for index, callback in enumerate(callbacks):
                    step = StepResult(
                        self.iteration,
                        reward[index],
                        terminated[index],
                        truncated[index],
                        infos[index],
                        None if stats is None else run_stats(stats, index),
                    )
                    carry_on = callback(self.run(index), step) is not False and carry_on
                if not carry_on:
                    break
            if self.updates:
                self.check_numerics()
        finally:
            if collector is not None:
                collector.shutdown(wait=True)
            if progress is not None:
                progress.close()
        return self

    # Runs' states ------------------------------------------------------------------------------------

    def run_state_dict(self, index: int, *, include_replay_buffer: bool = False) -> dict[str, Any]:
        """Run ``index``'s state in the solo checkpoint format (:meth:`MTSAC.state_dict`)."""
        count, shapes = len(self.runs), self._solo_shapes
        actor, critic = member_state_dict(self.actor, self.critic, index)
        _, critic_target = member_state_dict(self.actor, self.critic_target, index)
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "metadata": self.run_metadata(index),
            "actor": actor,
            "critic": critic,
            "critic_target": critic_target,
            "log_alpha": self.log_alpha.detach()[index].clone(),
            "actor_optimizer": member_optimizer_state(self.actor_optimizer.state_dict(), index, count, shapes["actor"]),
            "critic_optimizer": member_optimizer_state(
                self.critic_optimizer.state_dict(), index, count, shapes["critic"]
            ),
            "temperature_optimizer": member_optimizer_state(
                self.temperature_optimizer.state_dict(), index, count, shapes["temperature"]
            ),
            "combiners": {group: members[index].state_dict() for group, members in self.member_combiners.items()},
            "counters": {"iteration": self.iteration, "num_timesteps": self.num_timesteps, "updates": self.updates},
        }
        if include_replay_buffer:
            state["replay_buffer"] = self.replay_buffer.member_state_dict(index)
        return state

    def run_metadata(self, index: int) -> dict[str, Any]:
        """Run ``index``'s metadata, as a solo agent with its seed and combiner would record it."""
        name, hparams = self.member_combiners["critic"][index].spec()
        return {
            **self.spaces.metadata(),
            "config": dataclasses.asdict(self.config),
            "combiner": name,
            "combiner_kwargs": hparams,
            "seed": self.runs[index].seed,
        }

    def load_run_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore every run from its solo-format state (the pack's runs, in order), e.g. to resume.

        Raises:
            ValueError: when the states were not saved at the same iteration.
        """
        if len(states) != len(self.runs):
            raise ValueError(f"a pack of {len(self.runs)} runs needs {len(self.runs)} states, got {len(states)}")
        counters = [state["counters"] for state in states]
        if any(c != counters[0] for c in counters):
            iterations = [c["iteration"] for c in counters]
            raise ValueError(f"the runs' checkpoints are of different iterations ({iterations}); resume them alone")
        with torch.no_grad():
            for index, state in enumerate(states):
                load_member_state_dict(self.actor, self.critic, index, state["actor"], state["critic"])
                load_member_state_dict(self.actor, self.critic_target, index, state["actor"], state["critic_target"])
                self.log_alpha[index].copy_(state["log_alpha"])
        for optimizer, key in (
            (self.actor_optimizer, "actor_optimizer"),
            (self.critic_optimizer, "critic_optimizer"),
            (self.temperature_optimizer, "temperature_optimizer"),
        ):
            shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
            optimizer.load_state_dict(stack_optimizer_states([state[key] for state in states], shapes))
        for group, members in self.member_combiners.items():
            for combiner, state in zip(members, states, strict=True):
                combiner.load_state_dict(state["combiners"][group])
        self.iteration = int(counters[0]["iteration"])
        self.num_timesteps = int(counters[0]["num_timesteps"])
        self.updates = int(counters[0]["updates"])
        for index, state in enumerate(states):
            if "replay_buffer" in state:
                self.replay_buffer.load_member_state_dict(index, state["replay_buffer"])
        self._graph = None  # new tensors: capture again
        self._last_obs = None  # simulator states are not saved: the next learn() starts new episodes

    def __repr__(self) -> str:
        seeds = [spec.seed for spec in self.runs]
        return f"PackedMTSAC(runs={len(self.runs)}, seeds={seeds}, combiner={self.combiner_name!r}, device={self.device})"


def run_stats(stats: UpdateStats, index: int) -> UpdateStats:
    """Run ``index``'s share of a pack's update statistics."""
    values = {
        name: (value if value is None or name == "finite" else value[index])
        for name, value in stats._asdict().items()
    }
    return UpdateStats(**values)


class PackedRun:
    """One run of a :class:`PackedMTSAC`, seen as an agent of its own.

    It acts with its own actor (``predict``, SB3's convention), reports the pack's counters, and
    gives its state in the solo checkpoint format, which :meth:`MTSAC.load` reads.
    """

    def __init__(self, pack: PackedMTSAC, index: int) -> None:
        self.pack, self.index = pack, index
        self.seed = pack.runs[index].seed
        self.num_tasks, self.task_names = pack.num_tasks, pack.task_names
        self.config, self.device = pack.config, pack.device

    @property
    def iteration(self) -> int:
        return self.pack.iteration

    @property
    def num_timesteps(self) -> int:
        return self.pack.num_timesteps

    @property
    def updates(self) -> int:
        return self.pack.updates

    @property
    def skipped_updates(self) -> int:
        return self.pack.skipped_updates

    @property
    def generator(self) -> torch.Generator:
        """This run's random generator (its state is part of a checkpoint)."""
        return self.pack.generators[self.index]

    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """Actions for a ``(n, obs_dim)`` batch (or one observation) from this run's actor."""
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.shape[-1] != self.pack.obs_dim:
            raise ValueError(f"observations must have {self.pack.obs_dim} values, got shape {obs.shape}")
        # Every run's actor sees the batch (cheap next to a step of the envs); this run's answer is kept.
        mean, log_std = self.pack.policy(np.repeat(batch[None], len(self.pack), axis=0))
        mean, log_std = mean[self.index], log_std[self.index]
        if deterministic:
            squashed = torch.tanh(mean)
        else:
            noise = torch.randn(mean.shape, device=self.device, generator=self.generator)
            squashed, _ = squashed_gaussian(mean, log_std, noise)
        action = self.pack.spaces.scale_action(squashed.cpu().numpy())
        return (action[0] if single else action), None

    def state_dict(self, *, include_replay_buffer: bool = False) -> dict[str, Any]:
        return self.pack.run_state_dict(self.index, include_replay_buffer=include_replay_buffer)

    def metadata(self) -> dict[str, Any]:
        return self.pack.run_metadata(self.index)

    def __repr__(self) -> str:
        return f"PackedRun({self.index} of {len(self.pack)}, seed={self.seed})"
