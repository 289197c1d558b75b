"""``mtrl-fair train -m ... pack=true``: the runs of a sweep in one process, each a normal run.

A run of a pack computes what it computes alone to float32 rounding (tests/agents/test_packed.py
says why not bit for bit), so the metrics and weights of the packed and the one-by-one sweeps agree
to that rounding, and over a short run their evaluations and reports are the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import cli, metric_steps

TASKS = "benchmark.tasks=[reach-v3,drawer-close-v3]"
TINY = [
    TASKS,
    "agent.hidden_sizes=[16,16]",
    "agent.batch_size_per_task=8",
    "agent.buffer_size_per_task=200",
    "agent.warmup_steps=20",
    "benchmark.max_episode_steps=30",
    "log_every=10",
    "checkpoint_every=30",
    "eval_every=30",
    "eval_episodes=1",
    "final_eval_episodes=1",
    "device=cpu",
    "progress=false",
]
SWEEP = ["seed=0,1", "combiner.alpha=0,2"]
RUNS = ["combiner.alpha=0,seed=0", "combiner.alpha=0,seed=1", "combiner.alpha=2,seed=0", "combiner.alpha=2,seed=1"]


def records(run_dir: Path) -> list[dict]:
    """The metrics records without what depends on the clock."""
    kept = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept.append({k: v for k, v in record.items() if k != "time" and "per_s" not in k})
    return kept


def assert_close_records(packed: list[dict], alone: list[dict]) -> None:
    assert [r["step"] for r in packed] == [r["step"] for r in alone]
    for a, b in zip(packed, alone, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_a_packed_sweep_equals_the_same_runs_one_by_one(tmp_path: Path) -> None:
    packed, alone = tmp_path / "packed" / "sweep", tmp_path / "alone" / "sweep"
    done = cli("train", "-m", *SWEEP, *TINY, "steps=60", "pack=true", f"hydra.sweep.dir={packed}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Launching 1 jobs" in done.stdout + done.stderr  # one process for the four runs
    assert "(a pack of 4 runs)" in done.stdout
    done = cli("train", "-m", *SWEEP, *TINY, "steps=60", f"hydra.sweep.dir={alone}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in packed.iterdir() if p.is_dir()) == RUNS
    for run in RUNS:
        assert_close_records(records(packed / run), records(alone / run))
        assert json.loads((packed / run / "final_eval.json").read_text())["per_task"] == json.loads(
            (alone / run / "final_eval.json").read_text()
        )["per_task"]
        assert (packed / run / "config.yaml").read_text() == (alone / run / "config.yaml").read_text()
        a = torch.load(packed / run / "checkpoints" / "step_000000060.pt", weights_only=True)
        b = torch.load(alone / run / "checkpoints" / "step_000000060.pt", weights_only=True)
        for key in ("actor", "critic", "critic_target"):
            for name, value in b[key].items():
                torch.testing.assert_close(a[key][name], value, rtol=1e-5, atol=1e-6)
    for root in (packed, alone):
        done = cli("report", str(root), "--out", str(root.parent / "report"))
        assert done.returncode == 0, done.stderr
    reports = [(root.parent / "report" / "report.md").read_text().replace(str(root), "SWEEP") for root in (packed, alone)]
    assert reports[0] == reports[1]
    # A run of the pack is an ordinary run: it evaluates, and resumes alone.
    run_dir = packed / RUNS[3]
    done = cli("eval", str(run_dir), "episodes=1", "device=cpu")
    assert done.returncode == 0, done.stderr
    done = cli("train", *TINY, "seed=1", "combiner.alpha=2", "steps=90", "resume=true", f"hydra.run.dir='{run_dir}'")
    assert done.returncode == 0, done.stderr[-3000:]
    assert metric_steps(run_dir) == list(range(30, 91, 10))


@pytest.mark.slow
def test_a_packed_sweep_killed_resumes_every_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "mtrl_fair.cli", "train", "-m", *SWEEP, *TINY]
    command += ["steps=400", "checkpoint_every=30", "pack=true", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    # Kill it once every run has a checkpoint after the first one (mid-run, between two checkpoints).
    while time.monotonic() < deadline:
        checkpoints = [list((sweep / run / "checkpoints").glob("step_*.pt")) for run in RUNS]
        if all(len(found) >= 2 for found in checkpoints):
            break
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = cli("train", *command[4:], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming a pack of 4 runs at iteration" in done.stdout
    for run in RUNS:
        steps = metric_steps(sweep / run)
        assert steps == list(range(30, 401, 10)), run  # every logged step once, in order (updates from 21)
        assert json.loads((sweep / run / "final_eval.json").read_text())["step"] == 400
    # Launched again once finished: nothing is redone.
    done = cli("train", *command[4:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("is already complete") == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pack=true", "seed=1"], "pack=true packs the runs of a sweep: add -m"),
        (["-m", "combiner=mean,fairgrad", "pack=true"], "pack=true packs the runs of a sweep over seed or combiner.alpha"),
        (["-m", "seed=0,1", "combiner=pcgrad", "pack=true"], "combiner 'pcgrad' cannot be packed"),
        (["pack_runs=['agent.gamma=0.9']"], "the runs of a pack may differ only in seed, combiner.alpha"),
    ],
)
def test_bad_packs_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = cli("train", *TINY, *args, f"hydra.sweep.dir={tmp_path / 's'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert not (tmp_path / "r").exists()
