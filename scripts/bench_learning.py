"""Learning benchmark: does multi-task SAC learn an easy Meta-World subset, with mean and FairGrad?

It trains one run per (combiner, seed) through the ``mtrl-fair train`` command, all in parallel,
then scores a uniformly random policy with the same protocol as the reference, and writes a JSON
record and a Markdown table of per-task success rates (Meta-World's protocol: ``--eval-episodes``
episodes per task, success if ``info["success"]`` is ever 1).

    python scripts/bench_learning.py --steps 40000 --device cuda --out docs/results/learning

Each run directory (``<out>/runs/<combiner>_s<seed>``) keeps its metrics.jsonl, TensorBoard events
and checkpoints, so an interrupted benchmark can be re-run with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mtrl_fair

EASY_TASKS = ["reach-v3", "drawer-close-v3", "button-press-topdown-v3"]


class RandomPolicy:
    """Uniformly random actions in [-1, 1]: the floor every trained agent must clear."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return self.rng.uniform(-1.0, 1.0, size=(obs.shape[0], 4)).astype(np.float32), None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=EASY_TASKS)
    parser.add_argument("--combiners", nargs="+", default=["mean", "fairgrad"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=40_000, help="training iterations per run")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument(
        "--eval-episodes", type=int, default=50, help="episodes per task in the final evaluation"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / runs)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/learning"))
    parser.add_argument("--resume", action="store_true", help="continue the runs found in --out")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="more overrides for every run, e.g. agent.warmup_steps=2000"
    )
    args = parser.parse_args()

    runs = [(combiner, seed) for combiner in args.combiners for seed in args.seeds]
    threads = args.threads or max(1, (torch.get_num_threads() or 1) // len(runs))
    tasks = "[" + ",".join(args.tasks) + "]"
    args.out.mkdir(parents=True, exist_ok=True)
    processes = []
    start = time.perf_counter()
    for combiner, seed in runs:
        run_dir = args.out / "runs" / f"{combiner}_s{seed}"
        command = [
            sys.executable, "-m", "mtrl_fair.cli", "train",
            f"benchmark.tasks={tasks}", f"combiner={combiner}", f"seed={seed}", f"steps={args.steps}",
            f"device={args.device}", f"eval_every={args.eval_every}", f"final_eval_episodes={args.eval_episodes}",
            f"checkpoint_every={max(args.eval_every, 1)}", "progress=false", f"hydra.run.dir={run_dir}",
            *(["resume=true"] if args.resume else []), *args.extra,
        ]  # fmt: skip
        log = (args.out / f"{combiner}_s{seed}.log").open("w")
        # The runs share the machine: give each an equal share of the cores.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        processes.append(
            (
                combiner,
                seed,
                run_dir,
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
            )
        )
    for combiner, seed, _, process in processes:
        if process.wait() != 0:
            sys.exit(f"the {combiner} run (seed {seed}) failed; see {args.out / f'{combiner}_s{seed}.log'}")
    wall = time.perf_counter() - start

    random_result = mtrl_fair.evaluate(
        RandomPolicy(0), "MT10", episodes=args.eval_episodes, seed=0, tasks=args.tasks
    )
    record = {
        "tasks": args.tasks,
        "steps": args.steps,
        "device": args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else None,
        "cpu": platform.processor() or platform.machine(),
        "eval_episodes": args.eval_episodes,
        "wall_s": wall,
        "random": random_result.to_dict(),
        "runs": [],
    }
    for combiner, seed, run_dir, _ in processes:
        final = json.loads((run_dir / "final_eval.json").read_text())
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curve = [
            {"step": r["step"], "success": r["charts/eval_success_rate"]}
            for r in metrics
            if "charts/eval_success_rate" in r
        ]
        rates = [r["charts/iterations_per_s"] for r in metrics if "charts/iterations_per_s" in r]
        record["runs"].append({
            "combiner": combiner, "seed": seed, "final": final, "curve": curve,
            "iterations_per_s_median": float(np.median(rates)) if rates else None,
        })  # fmt: skip
    (args.out / "learning.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "learning.md").write_text(_markdown(record))
    print(_markdown(record))


def _markdown(record: dict) -> str:
    tasks = record["tasks"]
    header = "| policy | " + " | ".join(tasks) + " | mean |\n|---|" + "---:|" * (len(tasks) + 1) + "\n"
    rows = [
        "| random | "
        + " | ".join(f"{record['random']['per_task'][t]:.2f}" for t in tasks)
        + f" | {record['random']['mean_success']:.2f} |"
    ]
    for run in record["runs"]:
        per_task = run["final"]["per_task"]
        rows.append(
            f"| {run['combiner']} (seed {run['seed']}) | "
            + " | ".join(f"{per_task[t]:.2f}" for t in tasks)
            + f" | {run['final']['mean_success']:.2f} |"
        )
    curves = "\n".join(
        f"- {run['combiner']} (seed {run['seed']}): "
        + ", ".join(f"{point['step']}: {point['success']:.2f}" for point in run["curve"])
        + (f" ({run['iterations_per_s_median']:.0f} it/s)" if run["iterations_per_s_median"] else "")
        for run in record["runs"]
    )
    return (
        f"{record['steps']} iterations on {record['device']}"
        + (f" ({record['gpu']})" if record["gpu"] else "")
        + f", {record['eval_episodes']} evaluation episodes per task, wall time {record['wall_s'] / 60:.1f} min\n\n"
        + header
        + "\n".join(rows)
        + "\n\nEvaluation success over iterations (10 episodes per task until the last point):\n"
        + curves
        + "\n"
    )


if __name__ == "__main__":
    main()
