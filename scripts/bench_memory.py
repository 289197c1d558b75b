"""Does a long run grow its memory? Resident set size over a long training run, after warm-up.

Trains ``MTSAC`` in this process on a Meta-World task subset, with a replay buffer small enough to
be full early (the buffer's pages are committed as it fills, which is expected growth), and samples
the process's resident set size every ``--every`` iterations. It reports the RSS once the buffer is
full and at the end, and the growth in between per 1,000 iterations, which should be about zero.

    python scripts/bench_memory.py --steps 20000 --json docs/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.envs import make_vector_env


def rss_bytes() -> int:
    """The resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status: this benchmark needs Linux")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["reach-v3", "drawer-close-v3"])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--buffer-per-task", type=int, default=2_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    env = make_vector_env("MT10", args.tasks, seed=0)
    config = MTSACConfig(
        hidden_sizes=[64, 64],
        batch_size_per_task=32,
        buffer_size_per_task=args.buffer_per_task,
        warmup_steps=500,
    )
    agent = MTSAC(env, combiner="fairgrad", config=config, device=args.device, task_names=args.tasks)
    agent.diagnostics_every = args.every  # the logged-iteration path is exercised too
    samples: list[dict[str, float]] = []
    start = time.perf_counter()

    def sample(_: MTSAC, step: object) -> bool:
        if agent.iteration % args.every == 0:
            samples.append({"iteration": agent.iteration, "rss_mib": rss_bytes() / 2**20})
        return True

    agent.learn(args.steps * len(args.tasks), callback=sample)
    env.close()
    full = [s for s in samples if s["iteration"] >= args.buffer_per_task + args.every]
    growth = (
        (full[-1]["rss_mib"] - full[0]["rss_mib"])
        / max(full[-1]["iteration"] - full[0]["iteration"], 1)
        * 1000
    )
    record = {
        "tasks": args.tasks,
        "steps": args.steps,
        "device": args.device,
        "buffer_per_task": args.buffer_per_task,
        "wall_s": time.perf_counter() - start,
        "rss_after_buffer_full_mib": full[0]["rss_mib"],
        "rss_end_mib": full[-1]["rss_mib"],
        "growth_mib_per_1000_iterations": growth,
        "rss_max_minus_min_after_full_mib": float(np.ptp([s["rss_mib"] for s in full])),
        "samples": samples,
    }
    print(
        f"RSS once the buffer is full (iteration {full[0]['iteration']}): {full[0]['rss_mib']:.1f} MiB; "
        f"at iteration {full[-1]['iteration']}: {full[-1]['rss_mib']:.1f} MiB; "
        f"growth {growth:+.3f} MiB per 1,000 iterations"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
