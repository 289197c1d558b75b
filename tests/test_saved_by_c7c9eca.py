"""Files written by an earlier release (commit c7c9eca) still load, evaluate and resume.

``tests/data/run_c7c9eca/`` is a run directory made by that commit's ``mtrl-fair train`` (2 tasks,
16-unit networks, 60 iterations, FairGrad, seed 3), and ``tests/data/mtsac_alpha_fair_c7c9eca.pt``
an agent saved by its ``MTSAC.save`` (the α-fair loss transform around FairGrad, non-symmetric
action bounds), with the deterministic actions it predicted recorded below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from cli_runs import cli, metric_steps

from mtrl_fair.agents import MTSAC

DATA = Path(__file__).parent / "data"
# The overrides that made the run (the config must match for resume=true).
RUN_OVERRIDES = [
    "benchmark.tasks=[reach-v3,drawer-close-v3]",
    "combiner=fairgrad",
    "agent.warmup_steps=20",
    "agent.hidden_sizes=[16,16]",
    "agent.buffer_size_per_task=100",
    "agent.batch_size_per_task=8",
    "checkpoint_every=50",
    "log_every=10",
    "eval_every=0",
    "final_eval_episodes=1",
    "device=cpu",
    "progress=false",
    "seed=3",
]
# What the saved agent predicted for OBSERVATIONS with c7c9eca (deterministic actions).
OBSERVATIONS = np.concatenate([np.linspace(-1, 1, 18).reshape(3, 6), np.eye(3)], axis=1)
EXPECTED_ACTIONS = np.array(
    [
        [0.12059915065765381, 1.4544906616210938, -0.1956934928894043, 1.0669589042663574],
        [0.08170115947723389, 1.4217678308486938, -0.18362796306610107, 1.0528502464294434],
        [0.1294996738433838, 1.2963509559631348, -0.32535362243652344, 0.9476768970489502],
    ]
)


def copy_of_the_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run_c7c9eca"
    shutil.copytree(DATA / "run_c7c9eca", run_dir)
    return run_dir


def test_a_saved_agent_loads_with_its_combiner_and_acts_the_same() -> None:
    agent = MTSAC.load(DATA / "mtsac_alpha_fair_c7c9eca.pt", device="cpu")
    assert repr(agent.combiner) == "AlphaFairLoss(alpha=2.0, base='fairgrad', min_loss=1e-08)"
    assert agent.task_names == ["a-v3", "b-v3", "c-v3"]
    assert agent.updates == 3
    actions, _ = agent.predict(OBSERVATIONS, deterministic=True)
    np.testing.assert_allclose(actions, EXPECTED_ACTIONS, rtol=0, atol=1e-6)


def test_a_run_directory_evaluates(tmp_path: Path) -> None:
    run_dir = copy_of_the_run(tmp_path)
    done = cli("eval", str(run_dir), "episodes=1", "device=cpu", timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["step"] == 60
    assert set(record["per_task"]) == {"reach-v3", "drawer-close-v3"}


def test_a_run_directory_resumes_and_reports(tmp_path: Path) -> None:
    run_dir = copy_of_the_run(tmp_path)
    done = cli("train", *RUN_OVERRIDES, "steps=80", "resume=true", f"hydra.run.dir={run_dir}", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    steps = metric_steps(run_dir)
    assert steps == sorted(set(steps))  # each step once, in order
    assert steps[-1] == 80
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == 80
    report = cli("report", str(run_dir), "--out", str(tmp_path / "report"), timeout=300)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.md").is_file()
