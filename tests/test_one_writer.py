"""One writer per run directory, end to end: a second ``mtrl-fair train`` on a live run exits at once
with one line naming the holder and writes nothing there; the first completes with each logged step
once; a re-launched sweep skips a member that still runs and finishes the rest; ``eval`` and
``report`` read a run that another process holds.

The first process is paused (SIGSTOP) while the second one tries, so that it neither finishes
early nor writes while the run directory is compared byte for byte. A paused process still holds
its lock, as a busy one does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import cli, metric_steps
from test_cli import TINY

from mtrl_fair.cli import main
from mtrl_fair.run_lock import LOCK_FILE, read_holder

STEPS = 300
RUN = [*TINY, f"steps={STEPS}", "checkpoint_every=50", "eval_every=100"]
LOGGED = list(range(75, STEPS + 1, 25))  # from the first update after the 50 warm-up iterations


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mtrl_fair.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"},
    )


def wait_until_it_holds(process: subprocess.Popen[str], run_dir: Path, *, checkpoints: int = 0) -> None:
    """Until ``process`` holds ``run_dir`` and has written ``checkpoints`` checkpoints."""
    deadline = time.monotonic() + 240
    while True:
        holder = read_holder(run_dir)
        written = len(list(run_dir.glob("checkpoints/*.pt.sha256")))
        if holder is not None and holder.pid == process.pid and written >= checkpoints:
            return
        assert process.poll() is None, f"it ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "it did not take the run directory in time"
        time.sleep(0.05)


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused_by(done: subprocess.CompletedProcess[str], run_dir: Path, holder_pid: int) -> None:
    assert done.returncode == 4, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"error: {run_dir} is in use by pid {holder_pid} on host {socket.gethostname()} since "
    ), lines[0]
    assert "resume=true" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("first_resumes", [False, True], ids=["new-then-resume", "resume-then-new"])
def test_a_second_process_on_a_held_run_exits_at_once_and_writes_nothing(
    tmp_path: Path, first_resumes: bool
) -> None:
    run_dir = tmp_path / "run"
    new, resume = [*RUN, f"hydra.run.dir={run_dir}"], [*RUN, "resume=true", f"hydra.run.dir={run_dir}"]
    first_args, second_args = (resume, new) if first_resumes else (new, resume)
    first = start("train", *first_args)
    try:
        wait_until_it_holds(first, run_dir, checkpoints=2)  # an evaluation is logged, for the report
        first.send_signal(signal.SIGSTOP)
        before = tree(run_dir)
        second = cli("train", *second_args, timeout=240)
        assert_refused_by(second, run_dir, first.pid)
        assert tree(run_dir) == before  # not a byte written, no Hydra file either
        # Readers do not take the lock: they read the run its holder is writing.
        evaluated = cli("eval", str(run_dir), "episodes=1", "device=cpu", timeout=240)
        assert evaluated.returncode == 0, evaluated.stderr
        reported = cli("report", str(run_dir), "--out", str(tmp_path / "report"), timeout=240)
        assert reported.returncode == 0, reported.stderr
        assert (tmp_path / "report" / "report.md").is_file()
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert metric_steps(run_dir) == LOGGED  # each step once, in order
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == STEPS


def test_two_processes_started_together_leave_one_complete_run(tmp_path: Path) -> None:
    """The requeued job beside the old one: the same command twice at once; one trains, one exits."""
    run_dir = tmp_path / "run"
    args = ["train", *RUN, "resume=true", f"hydra.run.dir={run_dir}"]
    processes = [start(*args), start(*args)]
    results = [(p, *p.communicate(timeout=400)) for p in processes]
    finished = [p for p, _, _ in results if p.returncode == 0]
    refused = [(p, out, err) for p, out, err in results if p.returncode != 0]
    assert len(finished) == 1, [(p.returncode, err) for p, _, err in results]
    (loser, out, err), winner = refused[0], finished[0]
    assert_refused_by(
        subprocess.CompletedProcess(loser.args, loser.returncode, out, err), run_dir, winner.pid
    )
    assert metric_steps(run_dir) == LOGGED
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == STEPS


SWEEP_STEPS = 200


@pytest.mark.slow
def test_a_sweep_relaunched_while_a_member_runs_skips_it_and_finishes_the_rest(tmp_path: Path) -> None:
    """A sweep launched again while one of its jobs still runs (an old job not yet dead, a job started
    by hand): that member is skipped with one line, not a failure; the others finish; launched once
    more after the holder was killed, the sweep finishes the member from its last checkpoint."""
    sweep_dir = tmp_path / "sweep"
    run = [*TINY, f"steps={SWEEP_STEPS}", "checkpoint_every=50", "eval_every=0"]
    sweep = ["train", "-m", *run, "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    busy_dir = sweep_dir / "seed=0"
    # Quoted: the directory's name holds '=' (Hydra's override grammar).
    holder = start("train", *run, "seed=0", "resume=true", f"hydra.run.dir='{busy_dir}'")
    try:
        wait_until_it_holds(holder, busy_dir, checkpoints=1)
        holder.send_signal(signal.SIGSTOP)
        before = tree(busy_dir)
        first = cli(*sweep, timeout=400)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        skipped = [line for line in first.stdout.splitlines() if line.startswith("skipped: ")]
        assert skipped == [
            f"skipped: {busy_dir} is in use by pid {holder.pid} on host {socket.gethostname()} since "
            + skipped[0].rsplit(" since ", 1)[-1]
        ], first.stdout[-3000:]
        assert tree(busy_dir) == before
        assert json.loads((sweep_dir / "seed=1" / "final_eval.json").read_text())["step"] == SWEEP_STEPS
        assert not (busy_dir / "final_eval.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed while it holds the run: the lock goes with it
        holder.wait()
    again = cli(*sweep, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {busy_dir / 'checkpoints'}" in again.stdout
    assert again.stdout.count("is already complete") == 1
    for seed in (0, 1):
        run_dir = sweep_dir / f"seed={seed}"
        assert json.loads((run_dir / "final_eval.json").read_text())["step"] == SWEEP_STEPS
        assert metric_steps(run_dir) == list(range(75, SWEEP_STEPS + 1, 25)), seed


@pytest.mark.usefixtures("in_process_cli")
def test_a_rejected_resume_leaves_the_run_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume with other settings is refused after the run's lock is taken (it needs the saved
    config): it must not rewrite the run's files, Hydra's record of the job included."""
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "steps=60", f"hydra.run.dir={run_dir}"]) == 0
    before = {name: digest for name, digest in tree(run_dir).items() if name != LOCK_FILE}
    capsys.readouterr()
    assert main(["train", *TINY, "steps=60", "combiner=mean", "resume=true", f"hydra.run.dir={run_dir}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: resume=true but combiner differs from the run saved in ")
    assert {name: digest for name, digest in tree(run_dir).items() if name != LOCK_FILE} == before
