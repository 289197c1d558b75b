"""Fault injection: SIGKILL a real training run at random moments, start a second process on it,
feed the CLI bad input, and check that nothing is lost.

Part 1 trains a small run (2 tasks, small networks, a checkpoint every few iterations so that kills
also land during checkpoint writes) with ``resume=true``, kills it with SIGKILL after a random delay,
and starts it again, ``--kills`` times. While some of the runs hold the run directory, the same
command is started beside them (``--contenders``): it must exit at once with code 4 and one line
naming the holder (the run is paused meanwhile, so that the second process meets a live holder).
After the last kill the run is resumed with ``steps`` set to its last checkpoint plus
``--final-steps`` and must finish. (Until then ``steps`` is out of reach, so that the kills land
before the run ends, however fast the machine.) The checks:

* the finished run has its final evaluation, a loadable last checkpoint, and a ``metrics.jsonl``
  whose steps are exactly the logged iterations, each once;
* every restart resumed at a checkpoint at or after the previous one, and no restart was refused
  (the lock of a killed run does not outlive it);
* the state survived every kill: between the newest checkpoints seen after two kills, and from there
  to the end, the counters agree (timesteps = iterations x tasks, one update per iteration after the
  warm-up), every optimiser made exactly one step per update (a fresh optimiser, or a CUDA graph
  replaying on tensors that a resume replaced, would have fewer), and the replay buffer holds the
  earlier checkpoint's transitions unchanged, followed by one new one per task and iteration;
* on the GPU, no update fell back from its CUDA graph.

``--mode`` picks the path: ``cpu`` (sync envs, eager update), ``cpu-async`` (the CPU twin of the GPU
path: one process per task's env, env steps overlapped with the update), ``gpu`` (``device=cuda``,
the update replayed as a CUDA graph, overlapped env steps, async envs; re-captured in every process,
after every resume).

Part 2 tries bad input: bad overrides, and ``mtrl-fair eval`` on a truncated, a tampered and a
malicious (code-running pickle) checkpoint. Each must exit with one ``error:`` line, leave no new
run directory, run no code, and leave the finished run's files byte for byte as they were.

    python scripts/fault_injection.py --kills 10 --json docs/results/fault_injection.json
    python scripts/fault_injection.py --mode cpu-async --kills 10 --no-bad-inputs --json docs/results/fault_injection_cpu_async.json
    python scripts/fault_injection.py --mode gpu --kills 4 --contenders 1 --min-delay 8 --max-delay 20 --no-bad-inputs --json docs/results/fault_injection_gpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOG_EVERY = 10
WARMUP = 20
# Out of reach while the run is being killed; the last launch sets the real end.
UNREACHED_STEPS = 10_000_000
SMALL_RUN = [
    "benchmark.tasks=[reach-v3,drawer-close-v3]",
    "agent.hidden_sizes=[32,32]",
    "agent.batch_size_per_task=16",
    f"agent.warmup_steps={WARMUP}",
    "benchmark.max_episode_steps=40",
    f"log_every={LOG_EVERY}",
    "checkpoint_every=10",
    "eval_every=0",
    "final_eval_episodes=1",
    "progress=false",
]
MODES = {
    "cpu": ["device=cpu"],
    "cpu-async": ["device=cpu", "benchmark.vector_strategy=async", "agent.overlap_env_steps=true"],
    "gpu": [
        "device=cuda",
        "agent.cuda_graph=true",
        "agent.overlap_env_steps=true",
        "benchmark.vector_strategy=async",
    ],
}
EXIT_RUN_DIR_BUSY = 4
GRAPH_FALLBACK = "could not be captured in a CUDA graph"


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


def snapshot(run_dir: Path) -> dict[str, Any] | None:
    """What the newest loadable checkpoint holds: counters, optimiser steps, the replay buffer."""
    import torch

    from mtrl_fair.run_dir import latest_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    path, state = found
    buffer = state["replay_buffer"]
    return {
        "path": path.name,
        **{key: int(value) for key, value in state["counters"].items()},
        "optimizer_steps": {
            name: sorted({int(s["step"]) for s in state[name]["state"].values()})
            for name in ("actor_optimizer", "critic_optimizer", "temperature_optimizer")
        },
        "buffer_size": int(buffer["size"]),
        "buffer": {key: value for key, value in buffer.items() if isinstance(value, torch.Tensor)},
    }


def state_problems(before: dict[str, Any] | None, after: dict[str, Any], num_tasks: int) -> list[str]:
    """What is wrong with ``after``, a checkpoint written later than ``before`` by resumed processes."""
    import torch

    problems = []
    iteration, updates = after["iteration"], after["updates"]
    if after["num_timesteps"] != iteration * num_tasks:
        problems.append(f"{after['path']}: {after['num_timesteps']} timesteps at iteration {iteration}")
    if updates != max(0, iteration - WARMUP):
        problems.append(f"{after['path']}: {updates} updates at iteration {iteration}")
    for name, steps in after["optimizer_steps"].items():
        if steps and steps != [updates]:
            problems.append(f"{after['path']}: {name} made {steps} steps in {updates} updates")
    if after["buffer_size"] != iteration:
        problems.append(
            f"{after['path']}: {after['buffer_size']} transitions per task at iteration {iteration}"
        )
    if before is not None:
        if iteration < before["iteration"]:
            problems.append(f"{after['path']} is older than {before['path']}")
        kept = before["buffer_size"]
        for key, old in before["buffer"].items():
            if not torch.equal(after["buffer"][key][:, :kept], old):
                problems.append(f"{after['path']}: the replay buffer's {key!r} differs from {before['path']}")
    return problems


def holds(run_dir: Path, pid: int) -> bool:
    from mtrl_fair.run_lock import read_holder

    holder = read_holder(run_dir)
    return holder is not None and holder.pid == pid


def contend(args: list[str], holder: subprocess.Popen[str]) -> dict[str, Any]:
    """The same command beside a live holder (paused meanwhile): it must be refused with one line."""
    holder.send_signal(signal.SIGSTOP)
    try:
        start = time.perf_counter()
        done = cli(*args, timeout=300)
        wall = time.perf_counter() - start
    finally:
        holder.send_signal(signal.SIGCONT)
    lines = done.stderr.strip().splitlines()
    return {
        "exit": done.returncode,
        "wall_s": round(wall, 2),
        "refused_with_one_line_naming_the_holder": done.returncode == EXIT_RUN_DIR_BUSY
        and len(lines) == 1
        and f"in use by pid {holder.pid} on host " in lines[0],
        "message": lines[0] if lines else "",
    }


# Training processes started by this script: stopped if the script itself is stopped (a time limit),
# since those of the killing phase would otherwise train on, towards an end out of reach.
_launched: list[subprocess.Popen[str]] = []


def launch(args: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrl_fair.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    _launched.append(process)
    return process


def _stop_launched() -> None:
    for process in _launched:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()


def kill_and_resume(
    run_dir: Path,
    mode: str,
    kills: int,
    contenders: int,
    final_steps: int,
    rng: random.Random,
    min_delay: float,
    max_delay: float,
) -> dict[str, Any]:
    """Part 1: returns what happened, and whether the finished run is whole."""
    base = ["train", *SMALL_RUN, *MODES[mode], "resume=true", f"hydra.run.dir={run_dir}"]
    killing = [*base, f"steps={UNREACHED_STEPS}"]
    survived, starts, launches, during_training, logged, refused_launches = 0, [], 0, 0, 0, 0
    contended: list[dict[str, Any]] = []
    outputs: list[str] = []
    previous: dict[str, Any] | None = None
    problems: list[str] = []
    compared = 0
    while survived < kills:
        launches += 1
        process = launch(killing)
        # Start-up (imports, building the envs) takes a few seconds: kill after it, mostly.
        deadline = time.monotonic() + rng.uniform(min_delay, max_delay)
        while process.poll() is None and time.monotonic() < deadline:
            if len(contended) < contenders and len(contended) < launches and holds(run_dir, process.pid):
                paused = time.monotonic()
                contended.append(contend(killing, process))
                deadline += time.monotonic() - paused  # the kill comes as late in the run as planned
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            survived += 1
        output, _ = process.communicate()
        outputs.append(output)
        refused_launches += process.returncode == EXIT_RUN_DIR_BUSY
        if process.returncode not in (-signal.SIGKILL, EXIT_RUN_DIR_BUSY):
            raise SystemExit(f"the run failed on its own (exit {process.returncode}):\n{output}")
        # A kill counts as "during training" if the run logged new steps since the last one (the
        # others hit the start-up: imports, building the envs, loading the checkpoint).
        progress = max(metric_steps(run_dir), default=0)
        during_training += progress > logged
        logged = max(logged, progress)
        current = snapshot(run_dir)
        if current is not None:
            problems += state_problems(previous, current, num_tasks=2)
            compared += 1
            previous = current
    steps = (previous["iteration"] if previous is not None else 0) + final_steps
    process = launch([*base, f"steps={steps}"])
    output, _ = process.communicate(timeout=900)
    outputs.append(output)
    launches += 1
    if process.returncode != 0:
        raise SystemExit(f"the last launch failed (exit {process.returncode}):\n{output}")
    final_state = snapshot(run_dir)
    assert final_state is not None
    problems += state_problems(previous, final_state, num_tasks=2)
    compared += 1
    for output in outputs:
        starts += [
            int(line.rsplit(" ", 1)[1]) for line in output.splitlines() if line.startswith("resuming from")
        ]
    expected = list(range(LOG_EVERY * (WARMUP // LOG_EVERY + 1), steps + 1, LOG_EVERY))
    final = run_dir / "final_eval.json"
    checks = {
        "finished": final.exists() and json.loads(final.read_text())["step"] == steps,
        "metrics_steps_exact": metric_steps(run_dir) == expected,
        "resumes_monotonic": starts == sorted(starts),
        "no_restart_refused": refused_launches == 0,
        "state_continues_across_kills": not problems,
        "contenders_refused": all(c["refused_with_one_line_naming_the_holder"] for c in contended),
        "last_checkpoint_loads": cli("eval", str(run_dir), "episodes=1", *MODES[mode][:1]).returncode == 0,
    }
    if mode == "gpu":
        checks["graph_never_fell_back"] = not any(GRAPH_FALLBACK in output for output in outputs)
    return {
        "mode": mode,
        "overrides": MODES[mode],
        "kills": survived,
        "kills_during_training": during_training,
        "launches": launches,
        "resumed_at": starts,
        "steps": steps,
        "checkpoints_checked": compared,
        "state_problems": problems[:20],
        "contenders": contended,
        "contender_refusal_s_median": statistics.median(c["wall_s"] for c in contended)
        if contended
        else None,
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
        "existing run without resume": ["train", *SMALL_RUN, "steps=10", f"hydra.run.dir={run_dir}"],
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
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu", help="the training path to kill")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument(
        "--contenders",
        type=int,
        default=3,
        help="second processes started beside a live run (one per launch)",
    )
    parser.add_argument(
        "--final-steps",
        type=int,
        default=200,
        help="iterations the run trains after the last kill, to finish",
    )
    parser.add_argument("--min-delay", type=float, default=10.0, help="shortest wait before a kill (s)")
    parser.add_argument("--max-delay", type=float, default=25.0, help="longest wait before a kill (s)")
    parser.add_argument(
        "--no-bad-inputs", action="store_true", help="skip part 2 (it does not depend on --mode)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # `timeout` stops the runs too
    with tempfile.TemporaryDirectory(prefix="mtrl-fair-faults-") as tmp:
        work = Path(tmp)
        try:
            run = kill_and_resume(
                work / "run",
                args.mode,
                args.kills,
                args.contenders,
                args.final_steps,
                random.Random(args.seed),
                args.min_delay,
                args.max_delay,
            )
            bad = None if args.no_bad_inputs else bad_inputs(work / "run", work)
        finally:
            _stop_launched()
    report = {"kill_and_resume": run, "bad_inputs": bad, "wall_s": round(time.perf_counter() - start, 1)}
    ok = all(run["checks"].values()) and (bad is None or all(bad["checks"].values()))
    report["nothing_lost"] = ok
    print(
        f"mode {args.mode}: kills survived: {run['kills']}, {run['kills_during_training']} of them during "
        f"training (resumed at iterations {run['resumed_at']}; finished at {run['steps']})"
    )
    if run["contenders"]:
        print(
            f"second processes beside a live run: {len(run['contenders'])}, refused in "
            f"{run['contender_refusal_s_median']:.1f} s (median, start-up included)"
        )
    for name, passed in run["checks"].items():
        print(f"  {'ok ' if passed else 'FAIL'} {name}")
    for problem in run["state_problems"]:
        print(f"    {problem}")
    if bad is not None:
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
