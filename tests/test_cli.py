"""The ``mtrl-fair`` command end to end: train, eval, resume, a SIGKILL mid-run, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import cli, metric_steps

TASKS = "benchmark.tasks=[reach-v3,drawer-close-v3]"
# A tiny, fast run: 2 tasks, small networks, short episodes, few warm-up steps.
TINY = [
    TASKS,
    "agent.hidden_sizes=[32,32]",
    "agent.batch_size_per_task=16",
    "agent.warmup_steps=50",
    "benchmark.max_episode_steps=40",
    "log_every=25",
    "eval_episodes=1",
    "final_eval_episodes=1",
    "progress=false",
    "device=cpu",
]


def test_train_eval_and_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = cli(
        "train", *TINY, "steps=200", "checkpoint_every=100", "eval_every=100", f"hydra.run.dir={run_dir}"
    )
    assert done.returncode == 0, done.stderr
    assert f"run directory: {run_dir}" in done.stdout
    # The auto values, resolved once and said in one line; on the CPU nothing is switched on.
    assert "settings: device cpu, eager update, env steps before the update, sync envs" in done.stdout
    recorded = (run_dir / "config.yaml").read_text()
    for line in ("cuda_graph: false", "overlap_env_steps: false", "vector_strategy: sync", "device: cpu"):
        assert line in recorded, line
    for name in ("config.yaml", "metrics.jsonl", "final_eval.json", "final_eval.md"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [
        "step_000000100.pt",
        "step_000000200.pt",
    ]
    steps = metric_steps(run_dir)
    assert steps == sorted(set(steps))
    assert steps[-1] == 200
    records = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    logged = records[200]
    for key in (
        "losses/critic/reach-v3",
        "losses/actor/drawer-close-v3",
        "charts/temperature/reach-v3",
        "combiner/critic_weight/reach-v3",
        "combiner/actor_grad_norm/drawer-close-v3",
        "combiner/critic_mean_cosine",
        "charts/iterations_per_s",
        "charts/eval_success_rate/reach-v3",
    ):
        assert key in logged, key
    assert "charts/eval_success_rate" in records[100]  # the evaluation during training
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert set(final["per_task"]) == {"reach-v3", "drawer-close-v3"}
    assert final["step"] == 200

    evaluated = cli("eval", str(run_dir), "episodes=1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "reach-v3" in evaluated.stdout
    assert "drawer-close-v3" in evaluated.stdout
    table = json.loads((run_dir / "eval.json").read_text())
    assert table["episodes"] == 1
    assert set(table["per_task"]) == {"reach-v3", "drawer-close-v3"}
    assert "reach-v3" in (run_dir / "eval.md").read_text()

    resumed = cli(
        "train",
        *TINY,
        "steps=300",
        "checkpoint_every=100",
        "eval_every=100",
        "resume=true",
        f"hydra.run.dir={run_dir}",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "at iteration 200" in resumed.stdout
    steps = metric_steps(run_dir)
    assert steps == sorted(set(steps))
    assert steps[-1] == 300

    again = cli("train", *TINY, "steps=300", "resume=true", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0
    assert "already complete" in again.stdout


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "steps=600", "checkpoint_every=50", "eval_every=0", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrl_fair.cli", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "step_000000150.pt.sha256").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = max(metric_steps(run_dir))
    assert killed_at < 600

    resumed = cli("train", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    line = next(line for line in resumed.stdout.splitlines() if line.startswith("resuming from"))
    start = int(line.rsplit(" ", 1)[1])
    assert start >= 150
    assert start % 50 == 0
    # The step counter continued: every logged point once, no gap, up to the end.
    steps = metric_steps(run_dir)
    assert steps == list(range(75, 601, 25)), steps
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == 600


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("benchmark=mt11", "allowed: mt10, mt50"),
        ("benchmark.tasks=[reach-v9]", "unknown task 'reach-v9'"),
        ("combiner=nope", "allowed: alpha_fair_loss"),
        ("combiner.alpha=-1", "alpha must be"),
        ("steps=abc", "could not be converted to Integer"),
        ("agent.gama=0.5", "Key 'gama' not in"),
        ("device=tpu", "allowed: auto, cpu, cuda"),
        ("steps=0", "steps must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_no_run_directory(
    tmp_path: Path, override: str, expected: str
) -> None:
    run_dir = tmp_path / "run"
    done = cli("train", override, f"hydra.run.dir={run_dir}", timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:"), done.stderr
    assert expected in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not run_dir.exists()


def test_an_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    done = cli("train", *TINY, "steps=10", f"hydra.run.dir={run_dir}")
    assert done.returncode == 2
    assert "resume=true" in done.stderr
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "does/not/exist"], "no run directory or checkpoint"),
        (["eval"], "needs a run directory"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_eval_and_command_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    done = cli(*args, timeout=60)
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_eval_refuses_a_tampered_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "step_000000001.pt"
    bad.write_bytes(b"not a checkpoint")
    done = cli("eval", str(bad), timeout=60)
    assert done.returncode == 2
    assert "checkpoint" in done.stderr


def test_combiners_command_lists_the_registry() -> None:
    done = cli("combiners", timeout=60)
    assert done.returncode == 0
    assert "fairgrad" in done.stdout
    assert "alpha" in done.stdout
