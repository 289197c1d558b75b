"""The ``learn`` callback of a training run: episode statistics, logging, checkpoints and evaluations.

:class:`RunMonitor` is called by :meth:`mtrl_fair.agents.MTSAC.learn` after every iteration. Every
``log_every`` iterations it writes one record to ``metrics.jsonl`` and the same values to
TensorBoard (grouped ``charts/``, ``losses/``, ``combiner/``); every ``eval_every`` iterations it
runs an evaluation; every ``checkpoint_every`` iterations it writes a checkpoint, after that step's
record, so that a run resumed from it has every record up to its step. Every ``video_every``
iterations (an evaluation point) and at the end it records one episode per task into
``videos/step_<N>/<task>.mp4`` and the loggers (:mod:`mtrl_fair.loggers`: TensorBoard, and
Weights & Biases with ``logger=wandb``).

A write that fails because the disk is full raises :class:`~mtrl_fair.disk_full.DiskFullError`
naming it, and leaves no partial file: a checkpoint is written atomically (and removed with its
checksum if the disk fills between the two), a metrics line that does not fit is cut off, and the
TensorBoard file is cut back to its last flush.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrl_fair.agents import MTSAC, StepResult, UpdateStats
from mtrl_fair.agents.checkpoint import checksum_path, save_checkpoint
from mtrl_fair.agents.progress import ProgressBar
from mtrl_fair.config import TrainConfig
from mtrl_fair.disk_full import DiskFullError, quiet_disk_full_in_threads, writing
from mtrl_fair.envs import EvalResult
from mtrl_fair.loggers import RunLoggers, make_loggers
from mtrl_fair.run_dir import CHECKPOINT_DIR, append_line, find_checkpoints, truncate_metrics

__all__ = ["VIDEO_DIR", "RunMonitor", "one_torch_thread", "restore_rng_state", "rng_state"]

VIDEO_DIR = "videos"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one CPU thread for a while (then as before): while a policy is evaluated or filmed.

    Between two ``predict`` calls torch's idle OpenMP workers spin, and take the cores that the
    simulators, the software renderer and ffmpeg need; a ``predict`` on K rows gains nothing from
    more threads. On 2 cores, 10 episodes of 3 tasks took 65 s with torch's 2 threads and 17 s with
    one; a 240×240 clip 40 ms a frame and 17 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rng_state(env: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
    """The random streams a run draws from: torch's (noise, sampling) and the env's action space
    (warm-up actions). Meta-World's goal sampling lives in the simulators, which restart anyway.

    A run of a pack draws from its own ``generator`` instead of torch's default one; it is saved in
    the default one's place, so that the run resumes the same alone or packed.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    if generator is not None and generator.device.type == "cpu":
        cpu = generator.get_state()
    elif generator is not None:
        cuda[generator.device.index or 0] = generator.get_state()
    return {"torch": cpu, "cuda": cuda, "action_space": env.action_space.np_random.bit_generator.state}


def restore_rng_state(state: dict[str, Any], env: Any, generator: torch.Generator | None = None) -> None:
    """Put back what :func:`rng_state` saved (into ``generator`` for a run of a pack)."""
    if generator is None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    elif generator.device.type == "cpu":
        generator.set_state(state["torch"])
    elif state["cuda"]:
        generator.set_state(state["cuda"][generator.device.index or 0])
    env.action_space.np_random.bit_generator.state = state["action_space"]


class RunMonitor:
    """The ``learn`` callback of a run: episode statistics, logging, checkpoints and evaluations.

    ``resumed_from`` is the checkpoint the run was restored from and its iteration, if any.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        task_names: list[str],
        *,
        start_iteration: int,
        resolved_config: dict[str, Any],
        resumed_from: tuple[Path, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.task_names = task_names
        self.resolved_config = resolved_config
        self.last_checkpoint = resumed_from
        """The newest checkpoint on disk that this run can be resumed from, and its iteration."""
        num_tasks = len(task_names)
        # The checkpoint of iteration N follows N's metrics record and logged events, so a run
        # resumed from it keeps them and logs from N + 1 on. The last iteration's record comes after
        # its checkpoint (it holds the final evaluation): a run resumed there logs it again.
        last_kept = start_iteration if start_iteration < cfg.steps else start_iteration - 1
        self._quiet_threads = contextlib.ExitStack()
        self._quiet_threads.enter_context(quiet_disk_full_in_threads())
        self.loggers: RunLoggers | None = None
        try:
            self.loggers = make_loggers(
                cfg.logger,
                run_dir,
                purge_step=last_kept + 1,
                config=resolved_config,
                wandb_project=cfg.wandb_project,
                wandb_entity=cfg.wandb_entity,
            )
            self.metrics_path = run_dir / "metrics.jsonl"
            with writing("metrics", self.metrics_path):
                truncate_metrics(self.metrics_path, last_kept)
        except BaseException:
            if self.loggers is not None:
                with contextlib.suppress(OSError, DiskFullError):
                    self.loggers.close()
            self._quiet_threads.close()
            raise
        # Training-episode statistics: success = info["success"] was 1 at any step of the episode.
        self._episode_success = np.zeros(num_tasks, dtype=bool)
        self._episode_return = np.zeros(num_tasks)
        self._recent_success: list[deque[float]] = [deque(maxlen=10) for _ in range(num_tasks)]
        self._recent_return: list[deque[float]] = [deque(maxlen=10) for _ in range(num_tasks)]
        self.latest_eval_success: float | None = None
        self._last_time, self._last_iteration = time.perf_counter(), start_iteration
        self._progress = ProgressBar(cfg.steps, start=start_iteration) if cfg.progress else None
        self.env: Any = None
        self.final_result: EvalResult | None = None
        self.eval_env: Any = None
        self.video_env: Any = None

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
            if cfg.video_every and iteration % cfg.video_every == 0:
                self.record_videos(agent)
        if values:
            self.write(iteration, agent.num_timesteps, values)
        # The checkpoint comes after this step's record: a run resumed from it has every record up
        # to its step (a record written after the last checkpoint is dropped and written again).
        if not final and iteration % cfg.checkpoint_every == 0:
            self.checkpoint(agent)
        if self._progress is not None:
            self._progress.update(iteration, self._status())
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

    def _status(self) -> str:
        """The progress bar's status: the latest training and evaluation success rates."""
        parts = []
        train_success = self._train_success()
        if train_success is not None:
            parts.append(f"train success {train_success:.2f}")
        if self.latest_eval_success is not None:
            parts.append(f"eval success {self.latest_eval_success:.2f}")
        return " · ".join(parts)

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
        assert self.loggers is not None
        self.loggers.log_scalars(values, iteration)
        record = {"step": iteration, "env_steps": env_steps, "time": time.time(), **values}
        with writing("metrics", self.metrics_path):
            append_line(self.metrics_path, json.dumps(record) + "\n")

    # Checkpoints -------------------------------------------------------------------------------------
    def checkpoint(self, agent: MTSAC) -> Path:
        if self.last_checkpoint is not None and self.last_checkpoint[1] == agent.iteration:
            return self.last_checkpoint[0]  # the run was resumed from this very state
        # Every event up to this iteration is on disk before its checkpoint exists.
        assert self.loggers is not None
        self.loggers.flush()
        state = agent.state_dict(include_replay_buffer=True)
        state["run"] = {
            "config": self.resolved_config,
            "benchmark": self.cfg.benchmark.name,
            "rng": rng_state(self.env, getattr(agent, "generator", None)),
        }
        path = self.run_dir / CHECKPOINT_DIR / f"step_{agent.iteration:09d}.pt"
        try:
            with writing("checkpoint", path):
                save_checkpoint(state, path)
        except DiskFullError:
            # The disk may have filled between the data file and its checksum: remove the pair, so
            # that the previous checkpoint is the newest again.
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
            raise
        self.last_checkpoint = (path, agent.iteration)
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
        with one_torch_thread():
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
        """The last checkpoint, then the final evaluation (Meta-World's protocol) and videos; its values."""
        self.checkpoint(agent)
        self.final_result = self.evaluate(agent, self.cfg.final_eval_episodes)
        if self.cfg.video_every:
            self.record_videos(agent)
        return self.eval_values(self.final_result)

    def record_videos(self, agent: MTSAC) -> None:
        """One episode per task into ``videos/step_<N>/<task>.mp4``, and to the loggers as ``videos/<task>``.

        The episodes are as long as the training's (``benchmark.max_episode_steps``); the clips are
        encoded by ffmpeg while they render, so the loop waits for the rendering alone.
        """
        from mtrl_fair.envs import make_vector_env
        from mtrl_fair.envs.video import record_videos

        if self._progress is not None:
            self._progress.note("recording videos")
        if self.video_env is None:  # built once, like the evaluation env
            self.video_env = make_vector_env(
                self.cfg.benchmark.name,
                self.task_names,
                seed=self.cfg.seed + 20_000,
                max_episode_steps=self.cfg.benchmark.max_episode_steps,
                render_size=self.cfg.video_size,
                camera=self.cfg.video_camera,
            )
        out_dir = self.run_dir / VIDEO_DIR / f"step_{agent.iteration:09d}"
        with one_torch_thread(), writing("videos", out_dir):
            videos = record_videos(agent, self.video_env, out_dir, preview=True)
        assert self.loggers is not None
        for task, video in videos.items():
            self.loggers.log_video(f"videos/{task}", video, agent.iteration)
        if self._progress is not None:
            self._progress.note("")

    def eval_values(self, result: EvalResult) -> dict[str, float]:
        values = {"charts/eval_success_rate": result.mean_success, "charts/eval_return": result.mean_return}
        for name in self.task_names:
            values[f"charts/eval_success_rate/{name}"] = result.per_task[name]
            values[f"charts/eval_return/{name}"] = float(np.mean(result.returns[name]))
        return values

    def close(self, *, failed: bool = False) -> None:
        """Close the envs and files. ``failed``: the run is already stopping with an error, the one to
        report, so a full disk met here again is not raised."""
        try:
            for env in (self.eval_env, self.video_env):
                if env is not None:
                    env.close()
            if self._progress is not None:
                self._progress.close()
            assert self.loggers is not None
            try:
                self.loggers.flush()  # raises a write that failed in a writer's thread since the last one
            except DiskFullError:
                if not failed:
                    raise
            finally:
                self.loggers.close()
        finally:
            self._quiet_threads.close()
