"""Training throughput on Meta-World MT10: the simulator floor, our agent, SB3's SAC, the paper's path.

One iteration steps every task's env once and makes one update, so a run of 2M iterations is the
literature's "2M steps". Measured in one run, side by side, on the same vector env:

- ``env_only``: random actions, no learning: the floor, the fastest any trainer can go;
- ``mtsac/<combiner>``: our ``MTSAC`` for each combiner (``mean`` is plain multi-task SAC), with
  ``--overlap`` also ``mtsac/<combiner>+overlap`` (envs stepped in a thread during the update), and
  with ``--cuda-graph`` also ``mtsac/<combiner>+graph`` (the update replayed from a CUDA graph, with
  the overlap too when ``--overlap`` is given), and with ``--defaults`` also
  ``mtsac/<combiner>+defaults`` (what ``mtrl-fair train`` does by default on the device: the auto
  settings, on their own vector env when that is not ``--vector-strategy``'s, beside its floor
  ``env_only/<strategy>``); the other ``mtsac`` rows have every speed switch off; with ``--pack S``
  also S FairGrad runs packed, one by one and as S concurrent processes, in run-iterations/s
  (``scripts/bench_pack.py``);
- ``sb3_sac``: Stable-Baselines3's ``SAC`` on the same 10-task vector env (one gradient step on a
  batch of 128 per task per env step, the same 3×400 networks): what a user gets today;
- ``paper_rl/fairgrad``: the published FairGrad RL code's update path, reimplemented here as a
  reference: the same losses, but K separate backward passes per loss, the Gram matrix copied to
  the CPU, and 20 SGD steps for the weights (``bench_combiners.paper_rl_write_grads``).

For each, ``update_ms`` is the median time of one update (sample + critic + actor + temperature +
targets, with the device synchronised), and ``iterations_per_s`` the end-to-end rate of the training
loop (env step, replay buffer, update) over ``--iterations`` iterations after a short warm-up. Each
is also given as a ratio to ``mtsac/mean`` and to the floor.

    python scripts/bench_throughput.py --device cpu --json docs/results/throughput_cpu.json
    python scripts/bench_throughput.py --device cuda --vector-strategy async --json docs/results/throughput_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's reference solver
import bench_pack
from bench_combiners import paper_rl_write_grads

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.agents.sac_update import SACUpdate
from mtrl_fair.envs import make_vector_env, resolve_vector_strategy
from mtrl_fair.jacobian import CombinedGradient

DEFAULT_COMBINERS = ["mean", "fairgrad", "pcgrad", "cagrad", "nashmtl"]


class PaperPathUpdate(SACUpdate):
    """The SAC update whose combined losses take the published RL code's path (the reference, not ours).

    K backward passes through the shared graph (``retain_graph``), the K×K Gram matrix copied to the
    host, FairGrad's weights from 20 SGD steps there, and the weighted sum written to ``.grad``.
    """

    def backward(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], Any],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        *,
        module: nn.Module,
        diagnostics: bool,
        has_aux: bool,
        batched_loss: Callable[[], Any],
    ) -> tuple[CombinedGradient, Any]:
        if not self.is_combined(group):
            return super().backward(
                group,
                loss_fn,
                params,
                task_batch,
                module=module,
                diagnostics=diagnostics,
                has_aux=has_aux,
                batched_loss=batched_loss,
            )
        value = loss_fn(params, task_batch)
        losses, aux = value if has_aux else (value, None)
        weights = paper_rl_write_grads(losses, list(params.values()))
        return CombinedGradient(losses.detach(), weights), aux


class PaperPathMTSAC(MTSAC):
    """``MTSAC`` with :class:`PaperPathUpdate`."""

    update_class = PaperPathUpdate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_only_rate(env: Any, iterations: int) -> float:
    """Iterations per second of the vector env alone, with random actions."""
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    start = time.perf_counter()
    for _ in range(iterations):
        env.step(env.action_space.sample())
    return iterations / (time.perf_counter() - start)


def time_training(
    warm_up: Callable[[], object],
    train: Callable[[], object],
    one_update: Callable[[], object],
    iterations: int,
    update_repeats: int,
    device: torch.device,
) -> tuple[float, list[float]]:
    """Iterations/s of ``train`` (``iterations`` of them) after ``warm_up``, then ``one_update`` times (ms)."""
    warm_up()
    sync(device)
    start = time.perf_counter()
    train()
    sync(device)
    rate = iterations / (time.perf_counter() - start)
    times = []
    for _ in range(update_repeats):
        sync(device)
        begin = time.perf_counter()
        one_update()
        sync(device)
        times.append((time.perf_counter() - begin) * 1e3)
    return rate, times


def measure_mtsac(
    agent: MTSAC, iterations: int, update_repeats: int, warmup: int
) -> tuple[float, list[float]]:
    """The training loop's iterations/s, and the times (ms) of ``update_repeats`` single updates."""
    return time_training(
        # Random warm-up steps, then a few updates (caches, allocator) before timing.
        lambda: agent.learn(warmup * agent.num_tasks),
        lambda: agent.learn(iterations * agent.num_tasks),
        # The update as learn() runs it: a fresh batch, then the eager or the graphed update.
        lambda: agent._update_from_buffer(agent.iteration),
        iterations,
        update_repeats,
        agent.device,
    )


def measure_sb3_sac(
    benchmark: str,
    tasks: list[str] | None,
    hidden: list[int],
    seed: int,
    device: torch.device,
    iterations: int,
    update_repeats: int,
    warmup: int,
) -> tuple[float, list[float]]:
    """SB3's ``SAC`` on the same tasks, networks and batch: iterations/s and single-update times (ms)."""
    from stable_baselines3 import SAC

    from mtrl_fair.sb3 import make_vec_env

    env = make_vec_env(benchmark, tasks, seed=seed)
    num_tasks = env.num_envs
    model = SAC(
        "MlpPolicy",
        env,
        policy_kwargs={"net_arch": list(hidden)},
        learning_rate=3e-4,
        batch_size=128 * num_tasks,
        buffer_size=(warmup + iterations + 10) * num_tasks,
        learning_starts=(warmup - 3) * num_tasks,
        train_freq=1,
        gradient_steps=1,
        seed=seed,
        device=device,
    )
    try:
        return time_training(
            lambda: model.learn(warmup * num_tasks),
            lambda: model.learn(iterations * num_tasks, reset_num_timesteps=False),
            lambda: model.train(gradient_steps=1, batch_size=128 * num_tasks),
            iterations,
            update_repeats,
            device,
        )
    finally:
        env.close()


def measure_defaults(
    args: argparse.Namespace, device: torch.device, env: Any, add: Callable[[str, float, list[float] | None], None]
) -> None:
    """``mtsac/<combiner>+defaults``: the agent with its default (auto) settings, on the vector env
    and with the torch threads that ``mtrl-fair train`` chooses on this device by default (with
    their own ``env_only`` floor when that env is not the one of the other rows)."""
    on_gpu = device.type == "cuda"
    strategy, why = resolve_vector_strategy("auto", gpu=on_gpu)
    print(f"  defaults: {strategy} envs ({why}), {'1 torch thread' if on_gpu else 'torch threads as they are'}")
    own_env = strategy != args.vector_strategy
    defaults_env = (
        make_vector_env(args.benchmark, args.tasks, seed=args.seed, vector_strategy=strategy) if own_env else env
    )
    threads = torch.get_num_threads()
    try:
        if own_env:
            add(f"env_only/{strategy}", env_only_rate(defaults_env, max(args.iterations, 100)), None)
        if on_gpu:
            torch.set_num_threads(1)
        config = MTSACConfig(  # the auto switches
            hidden_sizes=list(args.hidden), warmup_steps=args.warmup - 3, matmul_precision=args.matmul_precision
        )
        for name in args.combiners:
            agent = MTSAC(defaults_env, combiner=name, config=config, device=device, seed=args.seed)
            rate, times = measure_mtsac(agent, args.iterations, args.update_repeats, args.warmup)
            add(f"mtsac/{name}+defaults", rate, times)
            agent.env = None
            agent.replay_buffer = None
    finally:
        torch.set_num_threads(threads)
        if own_env:
            defaults_env.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="a subset of the benchmark's tasks (default: all)"
    )
    parser.add_argument("--vector-strategy", choices=["sync", "async"], default="sync")
    parser.add_argument("--combiners", nargs="+", default=DEFAULT_COMBINERS)
    parser.add_argument("--iterations", type=int, default=40, help="timed training iterations per method")
    parser.add_argument("--update-repeats", type=int, default=10, help="timed single updates per method")
    parser.add_argument("--warmup", type=int, default=10, help="iterations before timing (a few updates)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="also time each combiner with agent.overlap_env_steps (envs stepped during the update)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time each combiner with agent.cuda_graph (the update replayed from a CUDA graph; CUDA only)",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="also time each combiner as `mtrl-fair train` runs it by default on this device: the auto "
        "settings (on CUDA: graph, overlap, async envs where the cores allow, 1 torch thread)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=["highest", "high"],
        default="highest",
        help="agent.matmul_precision of every MTSAC row (high: TF32 on Ampere and newer GPUs)",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=1,
        help="also S FairGrad runs packed in one process, one by one, and as S concurrent processes (S > 1): "
        "run-iterations/s of each (scripts/bench_pack.py)",
    )
    parser.add_argument("--no-sb3", action="store_true", help="skip SB3's SAC")
    parser.add_argument("--no-paper", action="store_true", help="skip the published RL code's path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.cuda_graph and device.type != "cuda":
        print("error: --cuda-graph needs a CUDA device (--device cuda)", file=sys.stderr)
        return 2
    env = make_vector_env(args.benchmark, args.tasks, seed=args.seed, vector_strategy=args.vector_strategy)
    num_tasks = env.num_envs
    print(
        f"{args.benchmark}, {num_tasks} tasks, {args.vector_strategy} envs, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rows: list[dict[str, Any]] = []

    def add(method: str, rate: float, update_ms: list[float] | None) -> None:
        rows.append({
            "method": method, "iterations_per_s": rate,
            "update_ms": statistics.median(update_ms) if update_ms else None, "update_ms_values": update_ms,
        })  # fmt: skip
        update = f"{statistics.median(update_ms):9.2f} ms" if update_ms else "        –   "
        print(f"  {method:24s} {rate:8.2f} it/s   update {update}", flush=True)

    add("env_only", env_only_rate(env, max(args.iterations, 100)), None)
    # The eager update with the envs stepped first: every speed switch off, whatever the device.
    config = MTSACConfig(
        hidden_sizes=list(args.hidden),
        warmup_steps=args.warmup - 3,
        cuda_graph=False,
        overlap_env_steps=False,
        matmul_precision=args.matmul_precision,
    )
    agents: dict[str, MTSAC] = {}
    for name in args.combiners:
        agents[f"mtsac/{name}"] = MTSAC(env, combiner=name, config=config, device=device, seed=args.seed)
        if args.overlap:
            overlapped = dataclasses.replace(config, overlap_env_steps=True)
            agents[f"mtsac/{name}+overlap"] = MTSAC(
                env, combiner=name, config=overlapped, device=device, seed=args.seed
            )
        if args.cuda_graph:
            graphed = dataclasses.replace(config, cuda_graph=True, overlap_env_steps=args.overlap)
            agents[f"mtsac/{name}+graph"] = MTSAC(
                env, combiner=name, config=graphed, device=device, seed=args.seed
            )
    if not args.no_paper:
        agents["paper_rl/fairgrad"] = PaperPathMTSAC(
            env, combiner="fairgrad", config=config, device=device, seed=args.seed
        )
    for method, agent in agents.items():
        rate, times = measure_mtsac(agent, args.iterations, args.update_repeats, args.warmup)
        add(method, rate, times)
        agent.env = None  # the env is shared; the next agent resets it
        agent.replay_buffer = None  # free its memory
    if args.defaults:
        measure_defaults(args, device, env, add)
    env.close()
    if not args.no_sb3:
        rate, times = measure_sb3_sac(
            args.benchmark,
            args.tasks,
            args.hidden,
            args.seed,
            device,
            args.iterations,
            args.update_repeats,
            args.warmup,
        )
        add("sb3_sac", rate, times)

    floor = rows[0]["iterations_per_s"]
    base = next((r for r in rows if r["method"] == "mtsac/mean"), None)
    for row in rows:
        row["fraction_of_floor"] = row["iterations_per_s"] / floor
        if base is not None:
            row["iteration_cost_vs_mean"] = base["iterations_per_s"] / row["iterations_per_s"]
            if row["update_ms"] is not None:
                row["update_cost_vs_mean"] = row["update_ms"] / base["update_ms"]
    print(f"\n{'method':24s}    it/s  of floor  iteration ×mean  update ms  update ×mean")
    for row in rows:
        update = f"{row['update_ms']:9.2f}" if row["update_ms"] is not None else "        –"
        ratio = f"{row['update_cost_vs_mean']:11.2f}×" if "update_cost_vs_mean" in row else "           –"
        vs_mean = f"{row.get('iteration_cost_vs_mean', float('nan')):14.2f}×"
        print(
            f"{row['method']:24s} {row['iterations_per_s']:7.2f} {100 * row['fraction_of_floor']:8.1f}%"
            f" {vs_mean} {update} {ratio}"
        )
    pack_rows = bench_pack.measure(args) if args.pack > 1 else []
    for row in pack_rows:
        print(f"{row['method']:28s} {row['run_iterations_per_s']:9.2f} run-it/s  {row['vs_one_run']:5.2f}× one run")
    if args.json:
        record = {
            "benchmark": args.benchmark,
            "tasks": num_tasks,
            "vector_strategy": args.vector_strategy,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "iterations": args.iterations,
            "update_repeats": args.update_repeats,
            "hidden": args.hidden,
            "matmul_precision": args.matmul_precision,
            "command": " ".join(sys.argv),
            "rows": rows,
            "pack_rows": pack_rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
