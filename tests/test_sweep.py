"""Sweeps through Hydra multirun: run naming, checks before launch, and a Ray sweep that survives a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import TASKS, cli, metric_steps

from mtrl_fair.train_command import _sweep_dirname_override, _sweep_jobs

# 2 combiners × 2 seeds on a 2-task subset, tiny networks; each job checkpoints a few times.
STEPS = 200
SWEEP = [
    "-m",
    TASKS,
    "combiner=mean,fairgrad",
    "seed=0,1",
    f"steps={STEPS}",
    "agent.hidden_sizes=[32,32]",
    "agent.batch_size_per_task=16",
    "agent.warmup_steps=50",
    "benchmark.max_episode_steps=40",
    "log_every=25",
    "checkpoint_every=50",
    "eval_every=0",
    "final_eval_episodes=1",
    "progress=false",
    "device=cpu",
]
RUN_NAMES = sorted(f"combiner={c},seed={s}" for c in ("mean", "fairgrad") for s in (0, 1))


def test_sweep_jobs_expand_like_hydra() -> None:
    jobs = _sweep_jobs(["combiner=mean,fairgrad", "seed=0,1", "steps=10"])
    assert jobs == [
        ["combiner=mean", "seed=0", "steps=10"],
        ["combiner=mean", "seed=1", "steps=10"],
        ["combiner=fairgrad", "seed=0", "steps=10"],
        ["combiner=fairgrad", "seed=1", "steps=10"],
    ]


def test_a_sweep_job_is_named_by_its_swept_values_only() -> None:
    (override,) = _sweep_dirname_override(
        ["-m", TASKS, "combiner.alpha=1,2", "steps=10", "hydra/launcher=ray"]
    )
    key, _, value = override.partition("=")
    assert key == "hydra.job.config.override_dirname.exclude_keys"
    excluded = value.strip("[]").split(",")
    assert {"benchmark.tasks", "steps", "resume"} <= set(excluded)
    assert "combiner.alpha" not in excluded
    # A user's own choice wins.
    own = "hydra.job.config.override_dirname.exclude_keys=[seed]"
    assert _sweep_dirname_override(["-m", "seed=0,1", own]) == []


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = cli(
        "train", "-m", TASKS, "combiner=mean,nosuch", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: unknown combiner 'nosuch'"), done.stderr
    assert "fairgrad" in lines[0]  # the allowed values
    assert not sweep_dir.exists()


def _job_to_kill(sweep_dir: Path) -> int | None:
    """The PID of a Ray worker training a run of this sweep that has a checkpoint and is unfinished.

    Read from /proc: a worker names itself ``ray::_run_job`` while it runs a job, and holds its
    run's TensorBoard events file open.
    """
    targets = [
        run.resolve()
        for run in sweep_dir.glob("combiner=*")
        if list(run.glob("checkpoints/*.pt")) and not (run / "final_eval.json").exists()
    ]
    for proc in Path("/proc").iterdir() if targets else []:
        try:
            if not proc.name.isdigit() or not (proc / "cmdline").read_bytes().startswith(b"ray::_run_job"):
                continue
            open_paths = [Path(os.readlink(fd)) for fd in (proc / "fd").iterdir()]
        except OSError:  # the process ended meanwhile
            continue
        if any(target in path.parents for path in open_paths for target in targets):
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's process in /proc")
def test_a_ray_sweep_killed_mid_job_finishes_when_relaunched(tmp_path: Path) -> None:
    """Kill one job of a Ray sweep mid-run, re-run the sweep command: every run completes once."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "mtrl_fair.cli",
        "train",
        *SWEEP,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        # No automatic retry, so the kill interrupts the sweep and the re-launch has to finish it.
        "+hydra.launcher.ray.remote.max_retries=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "0"}

    # 1. Launch, and SIGKILL one running job once some unfinished run has a checkpoint.
    driver = subprocess.Popen(
        command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    killed = None
    try:
        deadline = time.monotonic() + 400
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            killed = _job_to_kill(sweep_dir)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        first_output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert killed is not None, f"no job was caught running:\n{first_output[-3000:]}"
    assert driver.returncode != 0, "the killed job should fail the sweep"
    completed_before = {
        run.name: (run / "final_eval.json").read_text()
        for run in sweep_dir.glob("combiner=*")
        if (run / "final_eval.json").exists()
    }
    assert len(completed_before) < len(RUN_NAMES)

    # 2. The same command again finishes the sweep.
    relaunch = subprocess.run(
        command, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600, start_new_session=True
    )
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    runs = sorted(run.name for run in sweep_dir.iterdir() if run.is_dir())
    assert runs == RUN_NAMES  # one directory per job, none duplicated
    log_steps = list(range(75, STEPS + 1, 25))  # logging starts with the first update, after warm-up
    for name in RUN_NAMES:
        run = sweep_dir / name
        final = json.loads((run / "final_eval.json").read_text())
        assert final["step"] == STEPS
        assert metric_steps(run) == log_steps, name  # every logged step exactly once
        if name in completed_before:  # finished runs are not redone
            assert (run / "final_eval.json").read_text() == completed_before[name]
    output = relaunch.stdout + relaunch.stderr
    assert "resuming from" in output
    assert output.count("is already complete") == len(completed_before)
