"""Fault injection: SIGKILL a real training run at random moments, feed the CLI bad input, and check
that nothing is lost.

Part 1 trains a small run (2 tasks, small networks, a checkpoint every few iterations so that kills
also land during checkpoint writes) with ``resume=true``, kills it with SIGKILL after a random delay,
and starts it again, until it has survived ``--kills`` kills and then finishes. The finished run
must have its final evaluation, a loadable last checkpoint, and a ``metrics.jsonl`` whose steps are
exactly the logged iterations, each once; every restart must resume at a checkpoint at or after the
previous one.

Part 2 tries bad input: bad overrides, and ``mtrl-fair eval`` on a truncated, a tampered and a
malicious (code-running pickle) checkpoint. Each must exit with one ``error:`` line, leave no new
run directory, run no code, and leave the finished run's files byte for byte as they were.

    python scripts/fault_injection.py --kills 10 --steps 10000 --json docs/results/fault_injection.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOG_EVERY = 10
SMALL_RUN = [
    "benchmark.tasks=[reach-v3,drawer-close-v3]",
    "agent.hidden_sizes=[32,32]",
    "agent.batch_size_per_task=16",
    "agent.warmup_steps=20",
    "benchmark.max_episode_steps=40",
    f"log_every={LOG_EVERY}",
    "checkpoint_every=10",
    "eval_every=0",
    "final_eval_episodes=1",
    "progress=false",
    "device=cpu",
    "resume=true",
]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtrl_fair.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def kill_and_resume(
    run_dir: Path, steps: int, kills: int, rng: random.Random, min_delay: float, max_delay: float
) -> dict:
    """Part 1: returns what happened, and whether the finished run is whole."""
    args = ["train", *SMALL_RUN, f"steps={steps}", f"hydra.run.dir={run_dir}"]
    survived, starts, launches, during_training, logged = 0, [], 0, 0, 0
    while True:
        launches += 1
        process = subprocess.Popen(
            [sys.executable, "-m", "mtrl_fair.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        if survived < kills:
            # Start-up (imports, building the envs) takes a few seconds: kill after it, mostly.
            delay = rng.uniform(min_delay, max_delay)
            try:
                output, _ = process.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                output, _ = process.communicate()
                survived += 1
                # A kill counts as "during training" if the run logged new steps since the last one
                # (the others hit the start-up: imports, building the envs, loading the checkpoint).
                progress = max(metric_steps(run_dir), default=0)
                during_training += progress > logged
                logged = max(logged, progress)
        else:
            output, _ = process.communicate(timeout=900)
        for line in output.splitlines():
            if line.startswith("resuming from"):
                starts.append(int(line.rsplit(" ", 1)[1]))
        if process.returncode == 0:
            break
        if process.returncode != -signal.SIGKILL:
            raise SystemExit(f"the run failed on its own (exit {process.returncode}):\n{output}")
    steps_logged = metric_steps(run_dir)
    expected = list(range(LOG_EVERY * ((20 // LOG_EVERY) + 1), steps + 1, LOG_EVERY))
    final = run_dir / "final_eval.json"
    checks = {
        "finished": final.exists() and json.loads(final.read_text())["step"] == steps,
        "metrics_steps_exact": steps_logged == expected,
        "resumes_monotonic": starts == sorted(starts),
        "last_checkpoint_loads": cli("eval", str(run_dir), "episodes=1").returncode == 0,
    }
    return {
        "kills": survived,
        "kills_during_training": during_training,
        "launches": launches,
        "resumed_at": starts,
        "checks": checks,
    }


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class _WritesMarker:
    """Unpickling this would create the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def bad_inputs(run_dir: Path, work: Path) -> dict:
    """Part 2: each bad input must give one error line, no new run directory and no side effect."""
    before = tree_digest(run_dir)
    checkpoint = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    truncated = work / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    tampered = work / "tampered.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    (work / "tampered.pt.sha256").write_text((checkpoint.parent / f"{checkpoint.name}.sha256").read_text())
    marker = work / "code-ran"
    malicious = work / "malicious.pt"
    malicious.write_bytes(pickle.dumps({"format": "mtrl-fair/mtsac", "payload": _WritesMarker(marker)}))

    fresh = work / "should-not-exist"
    cases = {
        "unknown benchmark": ["train", "benchmark=mt11", f"hydra.run.dir={fresh}"],
        "unknown task": ["train", "benchmark.tasks=[reach-v9]", f"hydra.run.dir={fresh}"],
        "unknown combiner": ["train", "combiner=nope", f"hydra.run.dir={fresh}"],
        "negative alpha": ["train", "combiner.alpha=-1", f"hydra.run.dir={fresh}"],
        "wrong type": ["train", "steps=many", f"hydra.run.dir={fresh}"],
        "misspelt key": ["train", "agent.gama=0.9", f"hydra.run.dir={fresh}"],
        "bad device": ["train", "device=tpu", f"hydra.run.dir={fresh}"],
        "existing run without resume": ["train", *SMALL_RUN[:-1], "steps=10", f"hydra.run.dir={run_dir}"],
        "missing checkpoint": ["eval", str(work / "nothing.pt")],
        "truncated checkpoint": ["eval", str(truncated)],
        "tampered checkpoint": ["eval", str(tampered)],
        "malicious checkpoint": ["eval", str(malicious)],
    }
    results = {}
    for name, args in cases.items():
        done = cli(*args, timeout=120)
        lines = done.stderr.strip().splitlines()
        results[name] = {
            "exit": done.returncode,
            "one_error_line": len(lines) == 1 and lines[0].startswith("error:"),
            "message": lines[0] if lines else "",
        }
    return {
        "tried": len(cases),
        "cases": results,
        "checks": {
            "all_refused_with_one_line": all(
                r["exit"] == 2 and r["one_error_line"] for r in results.values()
            ),
            "no_run_directory_created": not fresh.exists(),
            "no_code_ran": not marker.exists(),
            "finished_run_unchanged": tree_digest(run_dir) == before,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=400, help="training iterations of the killed run")
    parser.add_argument("--min-delay", type=float, default=10.0, help="shortest wait before a kill (s)")
    parser.add_argument("--max-delay", type=float, default=25.0, help="longest wait before a kill (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtrl-fair-faults-") as tmp:
        work = Path(tmp)
        run = kill_and_resume(
            work / "run", args.steps, args.kills, random.Random(args.seed), args.min_delay, args.max_delay
        )
        bad = bad_inputs(work / "run", work)
    report = {"kill_and_resume": run, "bad_inputs": bad, "wall_s": time.perf_counter() - start}
    ok = all(run["checks"].values()) and all(bad["checks"].values())
    report["nothing_lost"] = ok
    print(
        f"kills survived: {run['kills']}, {run['kills_during_training']} of them during training "
        f"(resumed at iterations {run['resumed_at']})"
    )
    for name, passed in run["checks"].items():
        print(f"  {'ok ' if passed else 'FAIL'} {name}")
    print(f"bad inputs tried: {bad['tried']}")
    for name, passed in bad["checks"].items():
        print(f"  {'ok ' if passed else 'FAIL'} {name}")
    for name, result in bad["cases"].items():
        print(f"    {name}: exit {result['exit']}, {result['message'][:100]}")
    print("nothing lost" if ok else "SOMETHING WAS LOST")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
