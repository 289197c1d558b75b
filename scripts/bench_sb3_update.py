"""Cost of one update: ``MultiTaskSAC`` (SB3) against our ``MTSAC`` on the same shapes.

Both get a full replay buffer of random transitions with the MT10 shapes (K tasks, 39 + K
observation values, 4 actions, 3×400 MLPs, 128 transitions per task) and make one gradient step
(critic, actor, temperature, target update) per call. The methods are interleaved (each repeat runs
every one of them once) and the medians are reported, so the ratios are side by side. SB3's own
``SAC`` on the same total batch is the reference for what SB3 costs without any combiner.

    python scripts/bench_sb3_update.py --device cpu --json docs/results/sb3_update_cpu.json

A GPU update of these shapes is bound by kernel launches and Python, not arithmetic. The same
overhead shows on a CPU once the arithmetic is taken away (``--hidden-size 32 --batch-per-task 1``,
one thread): a proxy for the GPU ratio that needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.sb3 import MultiTaskSAC, sample_per_task


class ShapesOnlyEnv(gym.Env):
    """An env with the MT10 spaces that is never stepped: only the shapes matter here."""

    def __init__(self, obs_dim: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(self.observation_space.shape), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(self.observation_space.shape), 0.0, False, False, {}


def fill_sb3_buffer(model: SAC, num_tasks: int, obs_dim: int, size: int, rng: np.random.Generator) -> None:
    buffer = model.replay_buffer
    one_hot = np.eye(num_tasks)
    for name in ("observations", "next_observations"):
        values = rng.standard_normal((size, num_tasks, obs_dim))
        values[..., -num_tasks:] = one_hot
        getattr(buffer, name)[:size] = values
    buffer.actions[:size] = rng.uniform(-1, 1, (size, num_tasks, 4))
    buffer.rewards[:size] = rng.standard_normal((size, num_tasks))
    buffer.pos = size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batch-per-task", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=400, help="width of the 3 hidden layers")
    parser.add_argument("--combiners", nargs="+", default=["mean", "fairgrad"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    num_tasks, obs_dim, size = args.tasks, 39 + args.tasks, 2_000
    rng = np.random.default_rng(0)
    env = DummyVecEnv([lambda: ShapesOnlyEnv(obs_dim) for _ in range(num_tasks)])
    hidden = (args.hidden_size,) * 3
    net = {"net_arch": list(hidden)}
    batch_size = num_tasks * args.batch_per_task

    methods: dict[str, Callable[[], None]] = {}
    for name in args.combiners:
        ours = MTSAC(
            num_tasks=num_tasks,
            observation_space=env.observation_space,
            action_space=env.action_space,
            combiner=name,
            config=MTSACConfig(
                batch_size_per_task=args.batch_per_task, buffer_size_per_task=size, hidden_sizes=list(hidden)
            ),
            device=device,
        )
        obs = rng.standard_normal((size, num_tasks, obs_dim))
        obs[..., -num_tasks:] = np.eye(num_tasks)
        for t in range(size):
            ours.replay_buffer.add(
                obs[t],
                rng.uniform(-1, 1, (num_tasks, 4)),
                rng.standard_normal(num_tasks),
                obs[t],
                np.zeros(num_tasks),
            )
        sb3 = MultiTaskSAC(
            "MlpPolicy",
            env,
            combiner=name,
            batch_size=batch_size,
            buffer_size=size * num_tasks,
            policy_kwargs=net,
            device=device,
        )
        fill_sb3_buffer(sb3, num_tasks, obs_dim, size, rng)

        def ours_step(agent: MTSAC = ours) -> None:
            agent.update(agent.replay_buffer.sample(args.batch_per_task))

        def sb3_step(model: MultiTaskSAC = sb3) -> None:
            model._update(sample_per_task(model.replay_buffer, args.batch_per_task, num_tasks))  # type: ignore[arg-type]

        methods[f"mtsac/{name}"] = ours_step
        methods[f"sb3_multitask_sac/{name}"] = sb3_step
    plain = SAC(
        "MlpPolicy",
        env,
        batch_size=batch_size,
        buffer_size=size * num_tasks,
        policy_kwargs=net,
        device=device,
    )
    fill_sb3_buffer(plain, num_tasks, obs_dim, size, rng)
    plain.set_logger(configure(None, []))  # train() records to a logger; this one writes nowhere
    methods["sb3_sac"] = lambda: plain.train(gradient_steps=1, batch_size=batch_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.warmup + args.repeats):
        for name, step in methods.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if repeat >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1e3)

    records = []
    for name, values in times.items():
        records.append({
            "device": str(device), "K": num_tasks, "method": name, "what": "update",
            "ms_median": statistics.median(values), "ms_values": values,
            "batch_per_task": args.batch_per_task, "hidden_size": args.hidden_size,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.machine(),
        })  # fmt: skip
    print(
        f"one update, K={num_tasks}, {args.batch_per_task} per task, device {device} (median ms, ratio to MTSAC)"
    )
    for name in args.combiners:
        ours = statistics.median(times[f"mtsac/{name}"])
        theirs = statistics.median(times[f"sb3_multitask_sac/{name}"])
        print(f"  {name:10s} MTSAC {ours:8.2f}  MultiTaskSAC {theirs:8.2f}  ratio {theirs / ours:.2f}x")
    print(f"  SB3 SAC (no combiner, one batch of {batch_size}): {statistics.median(times['sb3_sac']):.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
