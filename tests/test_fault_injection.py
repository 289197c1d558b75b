"""Kill a real training run with SIGKILL at random moments, try bad input, and lose nothing.

Runs ``scripts/fault_injection.py`` (about two minutes on 2 cores): up to three kills at random points of a
small run (which checkpoints every 10 iterations, so kills also land during checkpoint writes),
resumes after each, and then the bad-input cases. The script itself checks that the finished run
has its final evaluation, a loadable checkpoint and every logged step exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"


def test_kills_at_random_points_and_bad_input_lose_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "faults.json"
    # Long enough that the kills land before the run can finish (a fast machine may finish it after
    # the second one: at least two kills are required).
    command = [sys.executable, str(SCRIPT), "--kills", "3", "--steps", "1500", "--seed", "1"]
    command += ["--min-delay", "8", "--max-delay", "20", "--json", str(report_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["nothing_lost"]
    run = report["kill_and_resume"]
    assert run["kills"] >= 2
    assert all(run["checks"].values()), run["checks"]
    assert report["bad_inputs"]["tried"] >= 12
    assert all(report["bad_inputs"]["checks"].values()), report["bad_inputs"]
