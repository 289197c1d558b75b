"""A training run of multi-task SAC on Meta-World: the run directory, logging, checkpoints, evaluation.

:func:`run_training` reads top to bottom: validate the config, build the env and the agent (or
restore them from the last checkpoint), then let the agent learn while :class:`RunMonitor` logs,
checkpoints and evaluates every so many iterations, and finally save and evaluate once more.

A run directory holds:

* ``config.yaml``: the resolved config;
* ``metrics.jsonl``: one JSON object per logged point, each with its ``step`` (iterations);
* ``events.out.tfevents.*``: the same values for TensorBoard, grouped ``charts/``, ``losses/``,
  ``combiner/``;
* ``checkpoints/step_<iteration>.pt`` (+ ``.sha256``): networks, optimisers, combiner states, the
  replay buffer, RNG states and counters, written atomically;
* ``final_eval.json`` / ``final_eval.md``: the per-task success rates at the end of training
  (``mtrl-fair eval`` writes ``eval.json`` / ``eval.md`` beside them).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mtrl_fair.agents import MTSAC, MTSACConfig, StepResult, UpdateStats, resolve_device
from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtrl_fair.config import ConfigError, TrainConfig, validate_train_config
from mtrl_fair.envs import EvalResult

__all__ = [
    "RunMonitor",
    "find_checkpoints",
    "latest_checkpoint",
    "replay_buffer_bytes",
    "resource_warnings",
    "run_training",
]

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")
# Keys of the resolved config that must not change when a run is resumed.
_FIXED_ON_RESUME = ("benchmark", "agent", "combiner", "seed")


def find_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by iteration in the file name)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and matches its checksum, with its contents.

    A newer file that fails (a run killed between writing a checkpoint and its checksum) is skipped
    in favour of the previous one.
    """
    for path in reversed(find_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError:
            continue
    return None


def _rng_state(env: Any) -> dict[str, Any]:
    """The random streams a run draws from: torch's (noise, sampling) and the env's action space
    (warm-up actions). Meta-World's goal sampling lives in the simulators, which restart anyway."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "action_space": env.action_space.np_random.bit_generator.state,
    }


def _set_rng_state(state: dict[str, Any], env: Any) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    env.action_space.np_random.bit_generator.state = state["action_space"]


class RunMonitor:
    """The ``learn`` callback of a run: episode statistics, logging, checkpoints and evaluations."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        task_names: list[str],
        *,
        start_iteration: int,
        resolved_config: dict[str, Any],
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.run_dir = run_dir
        self.task_names = task_names
        self.resolved_config = resolved_config
        num_tasks = len(task_names)
        # TensorBoard drops any event after start_iteration left by a killed run (purge_step),
        # including those of an attempt killed before its first checkpoint (start_iteration 0).
        self.writer = SummaryWriter(str(run_dir), purge_step=start_iteration)
        self.metrics_path = run_dir / "metrics.jsonl"
        _truncate_metrics(self.metrics_path, start_iteration)
        # Training-episode statistics: success = info["success"] was 1 at any step of the episode.
        self._episode_success = np.zeros(num_tasks, dtype=bool)
        self._episode_return = np.zeros(num_tasks)
        self._recent_success: list[deque[float]] = [deque(maxlen=10) for _ in range(num_tasks)]
        self._recent_return: list[deque[float]] = [deque(maxlen=10) for _ in range(num_tasks)]
        self.latest_eval_success: float | None = None
        self._last_time, self._last_iteration = time.perf_counter(), start_iteration
        self._progress = _ProgressBar(cfg.steps, start_iteration) if cfg.progress else None
        self.env: Any = None
        self.final_result: EvalResult | None = None
        self.eval_env: Any = None

    # The callback ----------------------------------------------------------------------------------
    def __call__(self, agent: MTSAC, step: StepResult) -> bool:
        self._track_episodes(step)
        iteration, cfg = step.iteration, self.cfg
        final = iteration >= cfg.steps
        # Everything logged at this iteration goes into one metrics record (one line per step).
        values: dict[str, float] = {}
        if step.stats is not None and (iteration % cfg.log_every == 0 or final):
            values.update(self.training_values(agent, iteration, step.stats))
        if final:
            values.update(self.finish(agent))
        elif cfg.eval_every and iteration % cfg.eval_every == 0:
            values.update(self.eval_values(self.evaluate(agent, cfg.eval_episodes)))
        if values:
            self.write(iteration, agent.num_timesteps, values)
        # The checkpoint comes after this step's record: a run resumed from it has every record up
        # to its step (a record written after the last checkpoint is dropped and written again).
        if not final and iteration % cfg.checkpoint_every == 0:
            self.checkpoint(agent)
        if self._progress is not None:
            self._progress.update(iteration, self.latest_eval_success, self._train_success())
        return True

    def _track_episodes(self, step: StepResult) -> None:
        num_tasks = len(self.task_names)
        success = np.asarray(step.info.get("success", np.zeros(num_tasks)), dtype=float)
        ended = np.logical_or(step.terminated, step.truncated)
        if ended.any() and "final_info" in step.info:
            # With same-step autoreset the last step's info of an ended episode is in final_info
            # (and the top-level keys are absent when every sub-env ended at once).
            final_success = np.asarray(
                step.info["final_info"].get("success", np.zeros(num_tasks)), dtype=float
            )
            success = np.where(ended, final_success, success)
        self._episode_success |= success >= 1.0
        self._episode_return += step.reward
        for k in np.flatnonzero(ended):
            self._recent_success[k].append(float(self._episode_success[k]))
            self._recent_return[k].append(float(self._episode_return[k]))
            self._episode_success[k], self._episode_return[k] = False, 0.0

    def _train_success(self) -> float | None:
        done = [np.mean(d) for d in self._recent_success if d]
        return float(np.mean(done)) if done else None

    # Logging -----------------------------------------------------------------------------------------
    def training_values(self, agent: MTSAC, iteration: int, stats: UpdateStats) -> dict[str, float]:
        """The values of a logged point (reading them is the only read-back from the device)."""
        now = time.perf_counter()
        rate = (iteration - self._last_iteration) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_iteration = now, iteration
        values: dict[str, float] = {
            "charts/iterations_per_s": rate,
            "charts/env_steps_per_s": rate * len(self.task_names),
            "charts/skipped_updates": float(agent.skipped_updates),
        }
        per_task = {
            "losses/critic": stats.critic_loss,
            "losses/actor": stats.actor_loss,
            "charts/temperature": stats.temperature,
            "combiner/critic_weight": stats.critic_weights,
            "combiner/actor_weight": stats.actor_weights,
            "combiner/critic_grad_norm": stats.critic_grad_norms,
            "combiner/actor_grad_norm": stats.actor_grad_norms,
        }
        host = {
            key: value.detach().float().cpu().numpy() for key, value in per_task.items() if value is not None
        }
        for key, array in host.items():
            for name, value in zip(self.task_names, array.tolist(), strict=True):
                values[f"{key}/{name}"] = value
            values[f"{key}/mean"] = float(array.mean())
        for key, cosine in (
            ("combiner/critic_mean_cosine", stats.critic_cosine),
            ("combiner/actor_mean_cosine", stats.actor_cosine),
        ):
            if cosine is not None:
                values[key] = float(cosine)
        for k, name in enumerate(self.task_names):
            if self._recent_success[k]:
                values[f"charts/train_success_rate/{name}"] = float(np.mean(self._recent_success[k]))
                values[f"charts/train_return/{name}"] = float(np.mean(self._recent_return[k]))
        train_success = self._train_success()
        if train_success is not None:
            values["charts/train_success_rate"] = train_success
        return values

    def write(self, iteration: int, env_steps: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, iteration)
        record = {"step": iteration, "env_steps": env_steps, "time": time.time(), **values}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    # Checkpoints -------------------------------------------------------------------------------------
    def checkpoint(self, agent: MTSAC) -> Path:
        state = agent.state_dict(include_replay_buffer=True)
        state["run"] = {
            "config": self.resolved_config,
            "benchmark": self.cfg.benchmark.name,
            "rng": _rng_state(self.env),
        }
        path = save_checkpoint(state, self.run_dir / CHECKPOINT_DIR / f"step_{agent.iteration:09d}.pt")
        self.writer.flush()
        # Older checkpoints are removed only once the new one is safely on disk.
        for old in find_checkpoints(self.run_dir)[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
            Path(f"{old}.sha256").unlink(missing_ok=True)
        return path

    # Evaluation --------------------------------------------------------------------------------------
    def evaluate(self, agent: MTSAC, episodes: int) -> EvalResult:
        from mtrl_fair.envs import evaluate, make_vector_env

        if self._progress is not None:
            self._progress.note(f"evaluating {episodes} episodes per task")
        if self.eval_env is None:  # built once: MT50 takes about a minute to build
            self.eval_env = make_vector_env(
                self.cfg.benchmark.name,
                self.task_names,
                seed=self.cfg.seed + 10_000,
                vector_strategy=self.cfg.benchmark.vector_strategy,
            )
        result = evaluate(
            agent,
            benchmark=self.cfg.benchmark.name,
            episodes=episodes,
            seed=self.cfg.seed + 10_000,
            tasks=self.task_names,
            env=self.eval_env,
        )
        self.latest_eval_success = result.mean_success
        if self._progress is not None:
            self._progress.note("")
        return result

    def finish(self, agent: MTSAC) -> dict[str, float]:
        """The last checkpoint, then the final evaluation (Meta-World's protocol); its values."""
        self.checkpoint(agent)
        self.final_result = self.evaluate(agent, self.cfg.final_eval_episodes)
        return self.eval_values(self.final_result)

    def eval_values(self, result: EvalResult) -> dict[str, float]:
        values = {"charts/eval_success_rate": result.mean_success, "charts/eval_return": result.mean_return}
        for name in self.task_names:
            values[f"charts/eval_success_rate/{name}"] = result.per_task[name]
            values[f"charts/eval_return/{name}"] = float(np.mean(result.returns[name]))
        return values

    def close(self) -> None:
        if self.eval_env is not None:
            self.eval_env.close()
        if self._progress is not None:
            self._progress.close()
        self.writer.close()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop logged points after ``last_step``: a resumed run logs them again, without duplicates."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


class _ProgressBar:
    """A rich progress bar: iterations, iterations/s, env steps/s, latest success rates."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[success]}"),
        )
        self._task = self._bar.add_task("train", total=total, completed=start, rate="", success="")
        self._start, self._start_iteration, self._last_refresh = time.perf_counter(), start, 0.0
        self._bar.start()

    def update(self, iteration: int, eval_success: float | None, train_success: float | None) -> None:
        now = time.perf_counter()
        if now - self._last_refresh < 0.25:  # formatting every iteration would cost more than a step
            return
        self._last_refresh = now
        rate = (iteration - self._start_iteration) / max(now - self._start, 1e-9)
        parts = []
        if train_success is not None:
            parts.append(f"train success {train_success:.2f}")
        if eval_success is not None:
            parts.append(f"eval success {eval_success:.2f}")
        self._bar.update(self._task, completed=iteration, rate=f"{rate:,.1f} it/s", success=" · ".join(parts))

    def note(self, text: str) -> None:
        self._bar.update(self._task, success=text)

    def close(self) -> None:
        self._bar.stop()


def run_training(cfg: TrainConfig, run_dir: str | Path, *, echo: Any = print) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg`` in ``run_dir``; return the final evaluation.

    Raises:
        ConfigError: for any bad value, before an environment starts or a file is written.
    """
    from mtrl_fair.envs import make_vector_env

    run_dir = Path(run_dir)
    # 1. Validate everything first: a bad value must not leave a half-made run behind.
    task_names = validate_train_config(cfg)
    resolved: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[assignment]
    saved = None
    if cfg.resume:
        saved = latest_checkpoint(run_dir)
        if saved is not None:
            _check_same_run(saved[1]["run"]["config"], resolved, saved[0])
    else:
        check_new_run_dir(run_dir)
    final_eval = _read_json(run_dir / "final_eval.json")
    if saved is not None and final_eval.get("step", -1) >= cfg.steps:
        echo(f"run {run_dir} is already complete ({final_eval['step']} of {cfg.steps} iterations)")
        return final_eval

    # 2. Build the env and the agent, or restore them.
    run_dir.mkdir(parents=True, exist_ok=True)
    for warning in resource_warnings(cfg, len(task_names), resolve_device(cfg.device), run_dir):
        echo(f"warning: {warning}")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    env = make_vector_env(
        cfg.benchmark.name,
        task_names,
        seed=cfg.seed,
        vector_strategy=cfg.benchmark.vector_strategy,
        max_episode_steps=cfg.benchmark.max_episode_steps,
    )
    try:
        combiner = dict(cfg.combiner)
        agent = MTSAC(
            env,
            combiner=str(combiner.pop("name")),
            combiner_kwargs=combiner,
            config=MTSACConfig(**asdict(cfg.agent)) if not isinstance(cfg.agent, MTSACConfig) else cfg.agent,
            device=cfg.device,
            seed=cfg.seed,
            task_names=task_names,
        )
        agent.diagnostics_every = cfg.log_every
        if saved is not None:
            agent.load_state_dict(saved[1])
            _set_rng_state(saved[1]["run"]["rng"], env)
            echo(f"resuming from {saved[0]} at iteration {agent.iteration}")
        monitor = RunMonitor(
            cfg, run_dir, task_names, start_iteration=agent.iteration, resolved_config=resolved
        )
        monitor.env = env
        # 3. Learn: the monitor logs, checkpoints and evaluates along the way.
        try:
            if agent.iteration >= cfg.steps:
                # Killed after the last checkpoint but before the final evaluation was written.
                monitor.write(agent.iteration, agent.num_timesteps, monitor.finish(agent))
            else:
                agent.learn((cfg.steps - agent.iteration) * agent.num_tasks, callback=monitor)
        finally:
            monitor.close()
    finally:
        env.close()
    # 4. The last iteration saved a checkpoint and evaluated the final agent.
    result = monitor.final_result
    assert result is not None
    summary = {**result.to_dict(), "step": agent.iteration, "run_dir": str(run_dir)}
    (run_dir / "final_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "final_eval.md").write_text(result.to_markdown())
    return summary


# Meta-World's observation: 39 state values, then the one-hot task id.
_METAWORLD_STATE_DIM = 39


def replay_buffer_bytes(num_tasks: int, capacity_per_task: int, action_dim: int = 4) -> int:
    """Bytes of a full replay buffer: float32 obs, next obs, action, reward and termination."""
    obs_dim = _METAWORLD_STATE_DIM + num_tasks
    return 4 * num_tasks * capacity_per_task * (2 * obs_dim + action_dim + 2)


def _free_host_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # not a POSIX system that reports it


def resource_warnings(
    cfg: TrainConfig,
    num_tasks: int,
    device: torch.device,
    run_dir: Path,
    *,
    free_device_bytes: int | None = None,
    free_disk_bytes: int | None = None,
) -> list[str]:
    """What will not fit, said before the run starts: the replay buffer in the training device's
    free memory, and the checkpoints (each holds the buffer) on the run directory's disk."""
    capacity = cfg.agent.buffer_size_per_task
    needed = replay_buffer_bytes(num_tasks, capacity)
    if free_device_bytes is None:
        free_device_bytes = (
            torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_host_memory()
        )
    if free_disk_bytes is None:
        free_disk_bytes = shutil.disk_usage(run_dir).free
    warnings = []
    gib = 2**30
    if free_device_bytes is not None and needed > free_device_bytes:
        fits = max(1, capacity * free_device_bytes // (2 * needed))
        warnings.append(
            f"a full replay buffer takes {needed / gib:.1f} GiB but {device} has {free_device_bytes / gib:.1f} GiB "
            f"free; lower agent.buffer_size_per_task (e.g. {fits}) or train on another device"
        )
    on_disk = needed * (cfg.keep_checkpoints + 1)  # the kept ones plus the one being written
    if needed > 0 and on_disk > free_disk_bytes:
        warnings.append(
            f"{cfg.keep_checkpoints + 1} checkpoints with a full replay buffer take {on_disk / gib:.1f} GiB but the "
            f"disk of {run_dir} has {free_disk_bytes / gib:.1f} GiB free; lower agent.buffer_size_per_task or "
            "keep_checkpoints, or choose another hydra.run.dir"
        )
    return warnings


def holds_run(run_dir: str | Path) -> bool:
    """Whether a run has started in ``run_dir`` (it has written a checkpoint or a metrics record)."""
    run_dir = Path(run_dir)
    return bool(find_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").exists()


def check_new_run_dir(run_dir: str | Path) -> None:
    """Refuse to start a new run where a run already is (``resume=true`` continues it instead)."""
    run_dir = Path(run_dir)
    if holds_run(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run; pass resume=true to continue it, or choose another hydra.run.dir"
        )


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    for key in _FIXED_ON_RESUME:
        if saved.get(key) != current.get(key):
            raise ConfigError(
                f"resume=true but {key} differs from the run saved in {path} ({saved.get(key)} there, "
                f"{current.get(key)} now); resume with the original settings or start a new run directory"
            )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
