"""Meta-World's evaluation protocol for any policy with stable-baselines3's ``predict``.

The protocol (Meta-World's own ``metaworld.evaluation.evaluation``, which does the loop here): run
``episodes`` episodes of every task, ending an episode as soon as the task is solved; an episode is a
success if ``info["success"]`` ever reaches 1. A task's success rate is its fraction of successful
episodes, and the benchmark's score is the mean over tasks.

With ``video_dir``, the policy then plays ``video_episodes`` more episodes of every task in a
rendering env built from the same seed, recorded as one clip per task
(:func:`~mtrl_fair.envs.video.record_videos`); their outcomes are in :attr:`EvalResult.videos`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from metaworld.evaluation import evaluation as metaworld_evaluation

from .benchmarks import MetaWorldVectorEnv, make_vector_env, resolve_tasks, vector_env_task_names
from .policy import ACTION_SIZE, PredictPolicy, check_policy, deterministic_actions
from .rendering import check_camera, prepare_rendering
from .video import TaskVideo, check_video_size, record_videos

__all__ = ["ACTION_SIZE", "EvalResult", "PredictPolicy", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate`; success rates are fractions in [0, 1]."""

    mean_success: float
    per_task: dict[str, float]
    returns: dict[str, list[float]]
    episodes: int
    benchmark: str
    seed: int
    videos: dict[str, TaskVideo] = field(default_factory=dict)
    """Each task's clip and the outcome of its episodes, when the evaluation recorded videos."""

    @property
    def mean_return(self) -> float:
        """Mean episodic return over all tasks and episodes (every task has ``episodes`` of them)."""
        return float(np.mean([np.mean(task_returns) for task_returns in self.returns.values()]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly types only, for ``metrics.jsonl`` and reports."""
        return {
            "benchmark": self.benchmark,
            "seed": self.seed,
            "episodes": self.episodes,
            "mean_success": self.mean_success,
            "mean_return": self.mean_return,
            "per_task": dict(self.per_task),
            "returns": {task: list(task_returns) for task, task_returns in self.returns.items()},
            **(
                {"videos": {task: video.to_dict() for task, video in self.videos.items()}}
                if self.videos
                else {}
            ),
        }

    def to_markdown(self, relative_to: str | Path | None = None) -> str:
        """A per-task table (success in %, mean return; the video's outcome and file when recorded)
        with the benchmark's mean as the last row.

        ``relative_to``: the folder the table is written to, so that the links to the videos are
        relative to it; otherwise they are the videos' paths as recorded.
        """
        video = " video |" if self.videos else ""
        lines = [
            f"{self.benchmark}, seed {self.seed}, {self.episodes} episodes per task",
            "",
            "| task | success (%) | mean return |" + video,
            "|---|---:|---:|" + ("---|" if self.videos else ""),
        ]
        for task, success in self.per_task.items():
            row = f"| {task} | {100 * success:.1f} | {np.mean(self.returns[task]):.1f} |"
            if self.videos:
                clip = self.videos.get(task)
                if clip is None:
                    row += " - |"
                else:
                    link = clip.path if relative_to is None else Path(os.path.relpath(clip.path, relative_to))
                    row += f" [{clip.describe()}]({link.as_posix()}) |"
            lines.append(row)
        mean_row = f"| **mean** | **{100 * self.mean_success:.1f}** | **{self.mean_return:.1f}** |"
        lines.append(mean_row + (" |" if self.videos else ""))
        return "\n".join(lines)


class _PredictAgent:
    """Adapts a ``predict`` policy to ``metaworld.evaluation.Agent`` (``eval_action`` and ``reset``).

    ``reset(mask)`` is Meta-World's signal of which sub-envs start a new episode: after the first
    (all-true) call, each true entry is one finished episode, which feeds the progress bar.
    """

    def __init__(self, policy: PredictPolicy, on_episodes_finished: Callable[[np.ndarray], None]) -> None:
        self._policy = policy
        self._on_episodes_finished = on_episodes_finished
        self._started = False

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return deterministic_actions(self._policy, observations)

    def reset(self, env_mask: np.ndarray) -> None:
        if self._started:
            self._on_episodes_finished(np.asarray(env_mask, dtype=bool))
        self._started = True


@contextlib.contextmanager
def _progress_bar(
    show: bool, description: str, tasks: int, episodes: int
) -> Iterator[Callable[[np.ndarray], None]]:
    """A callback counting finished episodes (at most ``episodes`` per task) into a rich bar if ``show``."""
    if not show:
        yield lambda finished: None
        return
    from rich.progress import Progress  # only needed when asked for

    finished_per_task = np.zeros(tasks, dtype=np.int64)
    with Progress() as progress:
        bar = progress.add_task(description, total=tasks * episodes)

        def count(finished: np.ndarray) -> None:
            np.minimum(finished_per_task + finished, episodes, out=finished_per_task)
            progress.update(bar, completed=int(finished_per_task.sum()))

        yield count


@contextlib.contextmanager
def _fraction_bar(show: bool, description: str) -> Iterator[Callable[[float], None]]:
    """A callback taking the fraction done into a rich bar if ``show``."""
    if not show:
        yield lambda fraction: None
        return
    from rich.progress import Progress

    with Progress() as progress:
        bar = progress.add_task(description, total=1.0)
        yield lambda fraction: progress.update(bar, completed=fraction)


def evaluate(
    policy: PredictPolicy,
    benchmark: str = "MT10",
    episodes: int = 50,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    *,
    vector_strategy: str = "sync",
    progress: bool = False,
    env: MetaWorldVectorEnv | None = None,
    video_dir: str | Path | None = None,
    video_episodes: int = 1,
    video_size: int = 240,
    video_camera: str = "corner3",
) -> EvalResult:
    """Success rate of ``policy`` on each task under Meta-World's protocol (``episodes`` per task).

    ``policy.predict(obs, deterministic=True)`` gets a float32 batch ``(K, 39 + K)`` (Meta-World's
    observation, then the one-hot task id) and must return actions ``(K, 4)``; it is called without
    recurrent state. The evaluation env is built from ``seed`` and closed afterwards.

    ``env`` reuses an evaluation env built by :func:`make_vector_env` for the same tasks (building
    MT50 takes about a minute, which periodic evaluations should not pay every time). It is left
    open, and ``seed`` is then only recorded: the env's own random state picks the goals.

    ``video_dir`` also records ``video_episodes`` episodes of every task as
    ``<video_dir>/<task>.mp4``, ``video_size`` pixels square (a multiple of 16) from
    ``video_camera`` (one of :data:`~mtrl_fair.envs.rendering.CAMERAS`), with the green border
    from the first success on. The rendering backend is checked before the evaluation starts.

    Raises:
        ValueError: a bad argument.
        RenderingError: ``video_dir`` is given but no OpenGL backend can render (the message names
            the package to install).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    check_policy(policy)
    task_names = resolve_tasks(benchmark, tasks)
    benchmark = benchmark.upper()
    if video_dir is not None:
        check_video_size(video_size)
        check_camera(video_camera)
        if (
            isinstance(video_episodes, bool)
            or not isinstance(video_episodes, (int, np.integer))
            or video_episodes < 1
        ):
            raise ValueError(f"video_episodes must be an integer >= 1, got {video_episodes!r}")
        prepare_rendering()  # a missing library fails now, not after the evaluation
    owned = env is None
    if env is None:
        env = make_vector_env(benchmark, task_names, seed=seed, vector_strategy=vector_strategy)
    elif vector_env_task_names(env) != task_names:
        raise ValueError(
            f"the given eval env runs tasks {vector_env_task_names(env)}, but the evaluation is of {task_names}"
        )
    try:
        with _progress_bar(progress, f"evaluating {benchmark}", len(task_names), int(episodes)) as count:
            _, _, success_by_task, returns_by_task = metaworld_evaluation(
                _PredictAgent(policy, count), env, int(episodes)
            )
    finally:
        if owned:
            env.close()
    # Meta-World counts a task's successes over its first `episodes` episodes only (sub-envs keep
    # running until the slowest task is done), and keeps those episodes' returns: rates are in [0, 1].
    per_task = {task: float(success_by_task[task]) for task in task_names}
    videos = {}
    if video_dir is not None:
        video_env = make_vector_env(
            benchmark, task_names, seed=seed, render_size=video_size, camera=video_camera
        )
        try:
            with _fraction_bar(progress, "recording videos") as update:
                videos = record_videos(
                    policy, video_env, video_dir, episodes=int(video_episodes), on_progress=update
                )
        finally:
            video_env.close()
    return EvalResult(
        mean_success=float(np.mean(list(per_task.values()))),
        per_task=per_task,
        returns={task: [float(value) for value in returns_by_task[task]] for task in task_names},
        episodes=int(episodes),
        benchmark=benchmark,
        seed=int(seed),
        videos=videos,
    )
