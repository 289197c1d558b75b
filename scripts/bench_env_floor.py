"""Where a vector step of Meta-World's envs spends its time: the simulators, or the plumbing around them.

The training loop can go no faster than its vector env steps ("the floor"). For each strategy this
measures, over ``--steps`` random-action steps after a warm-up:

- ``wall_ms``: the median wall time of one vector step;
- ``main_cpu_ms``: the median CPU time the stepping thread spends in it (sending actions, receiving
  and merging results). With ``overlap_env_steps`` that thread shares the interpreter with the
  trainer, so this is what the env costs the trainer on top of the simulators;
- for ``sync``, each sub-env's own step time: their sum is the sequential cost of the simulators,
  their maximum the wall time of an ideal parallel step (one core per task, nothing else);
- ``async_overhead_ms`` = async wall time − the slowest sub-env, and ``parallel_efficiency`` = sum of
  the sub-envs' steps / (async wall time × min(cores, K)).

``--lean-info`` adds ``async_lean_info``: the same sub-envs (Meta-World's own construction) whose
step returns only the ``success`` flag of its info, to measure what merging the other info keys
costs the stepping thread. Only a machine with a core per task shows the parallel floor; on fewer
cores the workers take turns.

    python scripts/bench_env_floor.py --json docs/results/env_floor_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import metaworld
import numpy as np

from mtrl_fair.envs import benchmark_tasks, make_vector_env
from mtrl_fair.envs.hardware import available_cores


class SuccessOnlyInfo(gym.Wrapper):
    """A sub-env whose step and reset return only what the training loop reads of the info."""

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {"success": info["success"]}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, _ = self.env.reset(**kwargs)
        return obs, {}


def _lean_sub_env(env_cls: Any, tasks: list[Any], seed: int, env_id: int, num_tasks: int) -> gym.Env:
    # Meta-World's own construction of one MT sub-env (as its vector entry point does), then the wrapper.
    env = metaworld._init_each_env(
        env_cls=env_cls, tasks=tasks, seed=seed, env_id=env_id, num_tasks=num_tasks, use_one_hot=True
    )
    return SuccessOnlyInfo(env)


def lean_info_env(benchmark: str, seed: int) -> gym.vector.AsyncVectorEnv:
    """The whole benchmark, async, each sub-env returning only ``success`` in its info."""
    bench = getattr(metaworld, benchmark)(seed=seed)
    names = list(bench.train_classes)
    fns = [
        functools.partial(
            _lean_sub_env, bench.train_classes[name], [t for t in bench.train_tasks if t.env_name == name],
            seed, index, len(names),
        )
        for index, name in enumerate(names)
    ]  # fmt: skip
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def time_vector_steps(env: Any, steps: int, seed: int) -> tuple[float, float]:
    """Median wall and stepping-thread CPU milliseconds of one vector step."""
    rng = np.random.default_rng(seed)
    shape = env.action_space.shape
    env.reset(seed=seed)
    for _ in range(20):
        env.step(rng.uniform(-1, 1, shape).astype(np.float32))
    wall, cpu = [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, shape).astype(np.float32)
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        env.step(action)
        cpu.append((time.thread_time() - cpu_start) * 1e3)
        wall.append((time.perf_counter() - wall_start) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def time_sub_envs(env: gym.vector.SyncVectorEnv, steps: int, seed: int) -> list[float]:
    """Median milliseconds of one step of each sub-env alone."""
    medians = []
    for index, sub_env in enumerate(env.envs):
        sub_env.reset(seed=seed + index)
        sub_env.action_space.seed(seed + index)
        times = []
        for _ in range(steps):
            action = sub_env.action_space.sample()
            start = time.perf_counter()
            sub_env.step(action)
            times.append((time.perf_counter() - start) * 1e3)
        medians.append(statistics.median(times))
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="MT10", choices=["MT10", "MT50"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lean-info", action="store_true", help="also the async env returning only success")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cores = available_cores()
    num_tasks = len(benchmark_tasks(args.benchmark))
    rows: dict[str, dict[str, float]] = {}

    sync_env = make_vector_env(args.benchmark, seed=args.seed, vector_strategy="sync")
    wall, cpu = time_vector_steps(sync_env, args.steps, args.seed)
    sub_envs = time_sub_envs(sync_env, args.steps, args.seed)
    sync_env.close()
    rows["sync"] = {"wall_ms": wall, "main_cpu_ms": cpu}
    envs: dict[str, Any] = {"async": lambda: make_vector_env(args.benchmark, seed=args.seed, vector_strategy="async")}
    if args.lean_info:
        envs["async_lean_info"] = lambda: lean_info_env(args.benchmark, args.seed)
    for name, build in envs.items():
        env = build()
        wall, cpu = time_vector_steps(env, args.steps, args.seed)
        env.close()
        slowest = max(sub_envs)
        rows[name] = {
            "wall_ms": wall,
            "main_cpu_ms": cpu,
            "async_overhead_ms": wall - slowest,
            "parallel_efficiency": sum(sub_envs) / (wall * min(cores, num_tasks)),
        }
    print(f"{args.benchmark}: {num_tasks} tasks, {cores} cores, {args.steps} steps")
    print(
        f"sub-env steps: sum {sum(sub_envs):.3f} ms, slowest {max(sub_envs):.3f} ms, "
        f"median {statistics.median(sub_envs):.3f} ms"
    )
    for name, row in rows.items():
        extra = "".join(f"  {key} {value:.3f}" for key, value in row.items() if key not in ("wall_ms", "main_cpu_ms"))
        print(
            f"  {name:16s} wall {row['wall_ms']:7.3f} ms ({1e3 / row['wall_ms']:6.1f} it/s)  "
            f"stepping-thread cpu {row['main_cpu_ms']:6.3f} ms{extra}"
        )
    if args.json is not None:
        record = {
            "benchmark": args.benchmark,
            "tasks": num_tasks,
            "cores": cores,
            "processor": platform.processor(),
            "steps": args.steps,
            "sub_env_step_ms": sub_envs,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
