"""Run-iterations per second of S runs trained three ways on one machine: packed, one by one, at once.

Used by ``bench_throughput.py --pack S`` (and runnable alone). Every way trains S FairGrad runs
(α = 2, seeds ``seed .. seed + S - 1``) with the default settings of the device (``auto``: on CUDA
the graphed update, overlapped env steps and async envs where the cores allow), and reports
*run-iterations* per second: iterations of any run, summed over runs.

- ``packed``: one :class:`~mtrl_fair.agents.packed.PackedMTSAC` of the S runs, each with its own
  vector env, in one process;
- ``one_by_one``: one run alone; S runs one after the other go at its rate;
- ``concurrent``: S processes started together, one run each, on the same device; the sum of their
  rates while all run.

    python scripts/bench_pack.py --pack 4 --device cuda --json docs/results/pack_cuda.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.agents.packed import PackedMTSAC, RunSpec
from mtrl_fair.envs import make_vector_env, resolve_vector_strategy

FAIRGRAD = {"alpha": 2.0}


def _config(args: argparse.Namespace) -> MTSACConfig:
    return MTSACConfig(hidden_sizes=list(args.hidden), warmup_steps=args.warmup - 3)


def _strategy(device: torch.device) -> str:
    return resolve_vector_strategy("auto", gpu=device.type == "cuda")[0]


def _timed(warm_up: Any, train: Any, iterations: int, device: torch.device) -> float:
    warm_up()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return iterations / (time.perf_counter() - start)


def solo_rate(args: argparse.Namespace, seed: int) -> float:
    """Iterations/s of one run alone (after its warm-up)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_num_threads(1)  # as mtrl-fair train does by default with a GPU update
    env = make_vector_env(args.benchmark, args.tasks, seed=seed, vector_strategy=_strategy(device))
    try:
        agent = MTSAC(env, combiner="fairgrad", combiner_kwargs=FAIRGRAD, config=_config(args), device=device, seed=seed)
        tasks = agent.num_tasks
        return _timed(
            lambda: agent.learn(args.warmup * tasks), lambda: agent.learn(args.iterations * tasks), args.iterations, device
        )
    finally:
        env.close()


def packed_rate(args: argparse.Namespace) -> float:
    """Run-iterations/s of the S runs as one pack."""
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cuda":
        torch.set_num_threads(1)
    seeds = [args.seed + i for i in range(args.pack)]
    envs = [make_vector_env(args.benchmark, args.tasks, seed=s, vector_strategy=_strategy(device)) for s in seeds]
    try:
        pack = PackedMTSAC(
            envs, [RunSpec(s, FAIRGRAD) for s in seeds], combiner="fairgrad", config=_config(args), device=device
        )
        rate = _timed(lambda: pack.learn(args.warmup), lambda: pack.learn(args.iterations), args.iterations, device)
        return rate * args.pack
    finally:
        torch.set_num_threads(threads)
        for env in envs:
            env.close()


def _concurrent_worker(args: argparse.Namespace, seed: int, start: Any, results: Any) -> None:
    start.wait()  # every process builds first, then all train at once
    results.put(solo_rate(args, seed))


def concurrent_rate(args: argparse.Namespace) -> float:
    """The summed iterations/s of S single-run processes started together on the same device."""
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    start, results = context.Barrier(args.pack), context.Queue()
    workers = [
        context.Process(target=_concurrent_worker, args=(args, args.seed + i, start, results)) for i in range(args.pack)
    ]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The three rows, each with its ratio to one run alone."""
    one = solo_rate(args, args.seed)
    rows = [
        {"method": f"one_by_one/fairgrad x{args.pack}", "run_iterations_per_s": one},
        {"method": f"concurrent/fairgrad x{args.pack}", "run_iterations_per_s": concurrent_rate(args)},
        {"method": f"packed/fairgrad x{args.pack}", "run_iterations_per_s": packed_rate(args)},
    ]
    for row in rows:
        row["vs_one_run"] = row["run_iterations_per_s"] / one
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", type=int, default=4, help="S, the number of runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.pack < 2:
        print("error: --pack needs at least 2 runs", file=sys.stderr)
        return 2
    rows = measure(args)
    for row in rows:
        print(f"  {row['method']:28s} {row['run_iterations_per_s']:9.2f} run-it/s  {row['vs_one_run']:5.2f}x one run")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": args.device, "benchmark": args.benchmark, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
