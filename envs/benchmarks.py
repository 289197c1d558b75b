"""Meta-World MT10/MT50 vector environments, built through Meta-World 3's own gymnasium registrations.

One sub-environment per task. Each observation is Meta-World's 39 values followed by the one-hot id of
the task among the K selected tasks (in the order given), exactly as Meta-World's ``OneHotWrapper``
builds it, so a batch of observations has shape ``(K, 39 + K)``.

Termination versus truncation (what a critic may bootstrap through):
    Meta-World episodes end by the time limit (``truncated``), never because the task ended: during
    training the environments do not terminate on success (Meta-World's default), so ``terminated``
    stays False. A time-limit end is an artefact of the episode budget, not of the task, so the
    critic's target must keep bootstrapping from the next state: only ``terminated`` may stop the
    bootstrap, never ``truncated``.

Autoreset (gymnasium's SAME_STEP mode, Meta-World's default):
    when an episode ends at a step, the vector env resets that sub-env within the same ``step`` call,
    so the returned ``next_obs`` row is already the first observation of the new episode. The real
    last observation of the ended episode is in ``infos["final_obs"]`` (and its info dict in
    ``infos["final_info"]``, boolean masks ``infos["_final_obs"]`` / ``infos["_final_info"]``).
    A replay buffer must store that real last observation as the transition's next observation:
    :func:`final_observations` puts it back.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, cast

import gymnasium as gym
import numpy as np
from metaworld import env_dict  # importing metaworld registers its "Meta-World/..." gymnasium ids

from .hardware import available_cores, gpu_driver_present
from .rendering import check_camera

BENCHMARKS: tuple[str, ...] = ("MT10", "MT50")
VECTOR_STRATEGIES: tuple[str, ...] = ("auto", "sync", "async")
MIN_CORES_FOR_ASYNC = 4
"""Below this many cores, one process per task leaves too little room for the trainer: ``auto`` is sync."""
MetaWorldVectorEnv: TypeAlias = gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv
"""What :func:`make_vector_env` returns: the two gymnasium vector envs Meta-World builds."""
MAX_EPISODE_STEPS = 500
"""Meta-World's own episode length; its environments raise if stepped past it."""

# The benchmark classes' `train_classes` are these very dicts, in this order; reading them gives the
# task names (and the one-hot order of the full benchmark) without building any environment.
_TASKS_BY_BENCHMARK: dict[str, tuple[str, ...]] = {
    "MT10": tuple(env_dict.MT10_V3),
    "MT50": tuple(env_dict.MT50_V3),
}
_TASK_BY_ENV_CLASS_NAME: dict[str, str] = {
    env_class.__name__: task for task, env_class in env_dict.ALL_V3_ENVIRONMENTS.items()
}


def _canonical_benchmark(benchmark: str) -> str:
    """The benchmark's name as in :data:`BENCHMARKS`; names are case-insensitive."""
    if not isinstance(benchmark, str) or benchmark.upper() not in _TASKS_BY_BENCHMARK:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: {', '.join(BENCHMARKS)}")
    return benchmark.upper()


def benchmark_tasks(benchmark: str) -> list[str]:
    """The task names of ``benchmark`` ("MT10" or "MT50", any case) in Meta-World's own order."""
    return list(_TASKS_BY_BENCHMARK[_canonical_benchmark(benchmark)])


def resolve_tasks(benchmark: str, tasks: Sequence[str] | None) -> list[str]:
    """The tasks to run: all of ``benchmark`` when ``tasks`` is None, else ``tasks`` checked, in order.

    The order given is kept: it is the order of the sub-environments and of the one-hot ids.
    """
    canonical = _canonical_benchmark(benchmark)
    allowed = _TASKS_BY_BENCHMARK[canonical]
    if tasks is None:
        return list(allowed)
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a list of task names, got the single string {tasks!r}")
    chosen = list(tasks)
    if not chosen:
        raise ValueError(f"tasks is empty; name at least one {canonical} task: {', '.join(allowed)}")
    seen: set[str] = set()
    for task in chosen:
        if task not in allowed:
            raise ValueError(f"unknown task {task!r} for {canonical}; allowed: {', '.join(allowed)}")
        if task in seen:
            raise ValueError(f"task {task!r} appears twice in tasks; each task may appear once")
        seen.add(task)
    return chosen


def resolve_vector_strategy(
    strategy: str, *, gpu: bool | None = None, cores: int | None = None
) -> tuple[str, str]:
    """``(sync or async, why)`` for a ``vector_strategy`` of ``auto``, ``sync`` or ``async``.

    ``auto`` is ``async`` (one process per task) when the update runs on a GPU and the machine has
    at least :data:`MIN_CORES_FOR_ASYNC` cores: the simulators then step in parallel while the
    host is free. Otherwise it is ``sync``: with a CPU update the trainer needs the cores itself,
    and with few cores the processes would only take turns. ``gpu`` says whether the update runs
    on a GPU (default: whether a GPU driver is present); ``cores`` defaults to this process's cores.
    """
    if strategy not in VECTOR_STRATEGIES:
        raise ValueError(f"unknown vector_strategy {strategy!r}; allowed: {', '.join(VECTOR_STRATEGIES)}")
    if strategy != "auto":
        return strategy, "as asked"
    gpu = gpu_driver_present() if gpu is None else gpu
    cores = available_cores() if cores is None else cores
    if not gpu:
        return "sync", "the update runs on the CPU"
    if cores < MIN_CORES_FOR_ASYNC:
        return "sync", f"only {cores} CPU cores (async envs need at least {MIN_CORES_FOR_ASYNC})"
    return "async", f"a GPU update and {cores} CPU cores"


def make_vector_env(
    benchmark: str = "MT10",
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    vector_strategy: str = "auto",
    max_episode_steps: int = MAX_EPISODE_STEPS,
    render_size: int | None = None,
    camera: str = "corner3",
) -> MetaWorldVectorEnv:
    """A vector env with one sub-env per task, observations ``(K, 39 + K)``, actions ``(K, 4)``.

    The whole benchmark in its own order uses Meta-World's "Meta-World/MT10" / "Meta-World/MT50"
    registration; any other task list uses "Meta-World/custom-mt-envs". Each sub-env draws its goals
    from Meta-World's 50 pre-sampled goals of its task. Every seed, 0 included, gives a seeded,
    deterministic env. Autoreset is SAME_STEP and training never terminates on success (see the
    module docstring). :func:`vector_env_task_names` reads back the task of each sub-env.

    ``vector_strategy``: ``sync`` (all sub-envs in this process), ``async`` (one process each) or
    ``auto`` (async where a GPU is present and there are cores for it, see
    :func:`resolve_vector_strategy`).

    ``render_size`` makes every sub-env render ``render_size``-pixel square RGB frames from
    ``camera`` (one of :data:`~mtrl_fair.envs.rendering.CAMERAS`); call
    :func:`~mtrl_fair.envs.rendering.prepare_rendering` first.
    """
    canonical = _canonical_benchmark(benchmark)
    task_names = resolve_tasks(canonical, tasks)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if render_size is not None:
        # Frames are drawn in this process's OpenGL contexts (see rendering.FrameRenderer).
        if vector_strategy == "async":
            raise ValueError("an env that renders frames steps in this process: use vector_strategy=sync")
        vector_strategy = "sync"
    vector_strategy, _ = resolve_vector_strategy(vector_strategy)
    if (
        isinstance(max_episode_steps, bool)
        or not isinstance(max_episode_steps, (int, np.integer))
        or not 1 <= max_episode_steps <= MAX_EPISODE_STEPS
    ):
        raise ValueError(
            f"max_episode_steps must be an integer from 1 to {MAX_EPISODE_STEPS} "
            f"(Meta-World's episode length), got {max_episode_steps!r}"
        )
    common: dict[str, Any] = {
        "vector_strategy": vector_strategy,
        "use_one_hot": True,
        "max_episode_steps": int(max_episode_steps),
        "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP,
    }
    if render_size is not None:
        check_camera(camera)
        common.update(
            render_mode="rgb_array",
            camera_name=None if camera == "free" else camera,
            width=int(render_size),
            height=int(render_size),
        )
    with warnings.catch_warnings():
        # Meta-World declares float64 observation bounds; gymnasium warns each time it casts them to
        # the float32 observations the vector env returns. The cast is harmless, the noise is not.
        warnings.filterwarnings("ignore", message=r".*precision lowered by casting to float32")
        if task_names == list(_TASKS_BY_BENCHMARK[canonical]):
            # Meta-World seeds every sub-env with `seed` and samples all goals from that one seed.
            env = gym.make_vec(f"Meta-World/{canonical}", seed=int(seed), **common)
        else:
            # The custom entry point seeds sub-env i with `None if not seed else seed + i`: a seed
            # of 0 would silently leave every sub-env unseeded (goals and resets drawn from fresh
            # entropy, so runs could not be repeated). Passing seed + 1 keeps every seed truthy, so
            # sub-env i is seeded with seed + 1 + i, deterministically, for every seed >= 0.
            env = gym.make_vec(
                "Meta-World/custom-mt-envs", envs_list=task_names, seed=int(seed) + 1, **common
            )
    return cast(MetaWorldVectorEnv, env)


def vector_env_task_names(env: MetaWorldVectorEnv) -> list[str]:
    """The task of each sub-env of a Meta-World vector env, in sub-env (and one-hot) order.

    Read from the sub-environments themselves (their Meta-World class), so it holds for any
    Meta-World multi-task vector env, including ones this module did not build.
    """
    return [_TASK_BY_ENV_CLASS_NAME[class_name] for class_name in env.get_attr("task_name")]


def final_observations(next_obs: np.ndarray, dones: np.ndarray, infos: Mapping[str, Any]) -> np.ndarray:
    """The next observations a replay buffer must store: ``next_obs`` with ended episodes' rows replaced.

    With SAME_STEP autoreset, the row of a sub-env whose episode ended at this step (``dones`` =
    ``terminated | truncated``) already holds the new episode's first observation; its real last
    observation is ``infos["final_obs"][i]``. Returns a copy; ``next_obs`` is left untouched.
    """
    ended = np.asarray(dones, dtype=bool)
    if ended.shape != next_obs.shape[:1]:
        raise ValueError(f"dones must have shape {next_obs.shape[:1]} (one per sub-env), got {ended.shape}")
    stored = np.array(next_obs, copy=True)
    if not ended.any():
        return stored
    if "final_obs" not in infos or "_final_obs" not in infos:
        raise ValueError(
            "an episode ended but infos has no 'final_obs'; build the env with SAME_STEP autoreset"
        )
    has_final = np.asarray(infos["_final_obs"], dtype=bool)
    for index in np.flatnonzero(ended):
        if not has_final[index]:
            raise ValueError(f"sub-env {index} is done but infos['_final_obs'][{index}] is False")
        stored[index] = infos["final_obs"][index]
    return stored
