"""The training rate of a run, read from its ``metrics.jsonl``: iterations/s after the warm-up.

    python scripts/run_rate.py RUN_DIR [--after 2000] [--json OUT]

Each logged point of ``mtrl-fair train`` records ``charts/iterations_per_s``, the rate since the
previous point. The median over the points logged after ``--after`` iterations (the random warm-up,
the CUDA graph's capture and the first evaluation left out) is the run's steady rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def steady_rate(run_dir: Path, after: int) -> tuple[float, int]:
    """The median iterations/s of the points logged after iteration ``after``, and their number."""
    rates = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("step", 0) > after and "charts/iterations_per_s" in record:
            rates.append(float(record["charts/iterations_per_s"]))
    if not rates:
        raise SystemExit(f"error: no iterations_per_s logged after iteration {after} in {run_dir / 'metrics.jsonl'}")
    return statistics.median(rates), len(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--after", type=int, default=2000, help="ignore the points up to this iteration")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rate, points = steady_rate(args.run_dir, args.after)
    config = (args.run_dir / "config.yaml").read_text() if (args.run_dir / "config.yaml").exists() else ""
    print(f"{args.run_dir}: {rate:.1f} iterations/s (median of {points} points after iteration {args.after})")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"run_dir": str(args.run_dir), "iterations_per_s": rate, "points": points,
                        "after": args.after, "config": config}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
