"""Kill a real training run with SIGKILL at random moments, start a second process beside it, try
bad input, and lose nothing.

Runs ``scripts/fault_injection.py``: three kills at random points of a small run (which checkpoints
every 10 iterations, so kills also land during checkpoint writes), a resume after each, a second
process on the live run (refused with one line), then the bad-input cases. The script itself checks
that the finished run has its final evaluation, a loadable checkpoint, every logged step exactly
once, and the same counters, optimiser states and replay buffer across every kill. The CPU twin of
the GPU path (async envs, env steps overlapped with the update) goes through the same kills; the GPU
path itself is a step of ``scripts/gpu_checks.sh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"
KILLS = 3


def inject_faults(tmp_path: Path, *options: str) -> dict:
    report_path = tmp_path / "faults.json"
    command = [sys.executable, str(SCRIPT), "--kills", str(KILLS), "--contenders", "1", "--seed", "1"]
    command += ["--min-delay", "8", "--max-delay", "20", "--json", str(report_path), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["nothing_lost"]
    run = report["kill_and_resume"]
    assert run["kills"] == KILLS  # the run cannot finish before its kills
    assert all(run["checks"].values()), run["checks"]
    assert run["checkpoints_checked"] == KILLS + 1
    assert len(run["contenders"]) == 1
    return report


@pytest.mark.slow
def test_kills_at_random_points_a_second_process_and_bad_input_lose_nothing(tmp_path: Path) -> None:
    report = inject_faults(tmp_path)
    assert report["kill_and_resume"]["mode"] == "cpu"
    assert report["bad_inputs"]["tried"] >= 12
    assert all(report["bad_inputs"]["checks"].values()), report["bad_inputs"]


@pytest.mark.slow
def test_the_cpu_twin_of_the_gpu_path_loses_nothing_either(tmp_path: Path) -> None:
    report = inject_faults(tmp_path, "--mode", "cpu-async", "--no-bad-inputs")
    run = report["kill_and_resume"]
    assert run["mode"] == "cpu-async"
    assert {"benchmark.vector_strategy=async", "agent.overlap_env_steps=true"} <= set(run["overrides"])
    assert report["bad_inputs"] is None
