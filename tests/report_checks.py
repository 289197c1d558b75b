"""Helpers shared by the tests under ``tests/report/``.

Run directories as the trainer writes them (config, metrics with a torn last line, final
evaluation), the ``mtrl-fair report`` command run in-process, and checks of the report it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mtrl_fair.report import main

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 3000


def make_run(
    run_dir: Path,
    *,
    combiner: dict[str, Any],
    seed: int,
    evals: dict[int, list[float]],
    final: list[float] | None = None,
    final_step: int = STEPS,
    tasks: list[str] = TASKS,
    config_tasks: bool = True,
    benchmark: str = "MT10",
    steps: int = STEPS,
    agent: dict[str, Any] | None = None,
) -> Path:
    """A run directory as the trainer writes it: config, metrics with a torn last line, final eval."""
    run_dir.mkdir(parents=True)
    config = {
        "benchmark": {
            "name": benchmark,
            "tasks": list(tasks) if config_tasks else None,
            "vector_strategy": "sync",
            "max_episode_steps": 500,
        },
        "agent": agent
        or {"hidden_sizes": [400, 400, 400], "actor_lr": 0.0003, "combine": ["critic", "actor"]},
        "combiner": combiner,
        "seed": seed,
        "steps": steps,
        "eval_every": 1000,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    lines = []
    for step, values in sorted(evals.items()):
        # A training-only point between evaluations, as the trainer logs every log_every iterations.
        lines.append({"step": step - 100, "env_steps": (step - 100) * len(tasks), "losses/critic/mean": 2.7})
        point: dict[str, Any] = {"step": step, "env_steps": step * len(tasks), "time": 1.0e9 + step}
        point["charts/eval_success_rate"] = float(np.mean(values))
        for task, value in zip(tasks, values, strict=True):
            point[f"charts/eval_success_rate/{task}"] = value
            point[f"charts/eval_return/{task}"] = 100.0 * value
        point["losses/critic/mean"] = 1.5
        lines.append(point)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    # A process killed mid-write leaves a torn last line.
    (run_dir / "metrics.jsonl").write_text(text + '{"step": 99999, "env_steps": 29')
    if final is not None:
        summary = {
            "benchmark": benchmark,
            "seed": seed,
            "episodes": 50,
            "mean_success": float(np.mean(final)),
            "mean_return": 500.0,
            "per_task": dict(zip(tasks, final, strict=True)),
            "returns": {t: [1.0] for t in tasks},
            "step": final_step,
            "run_dir": str(run_dir),
        }
        (run_dir / "final_eval.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def finished(run_dir: Path, combiner: dict[str, Any], seed: int, final: list[float], **kw: Any) -> Path:
    """A completed run whose evaluations end at ``final``."""
    evals = {1000: [0.0] * len(final), 2000: [v / 2 for v in final], STEPS: final}
    return make_run(run_dir, combiner=combiner, seed=seed, evals=evals, final=final, **kw)


FAIRGRAD = {"name": "fairgrad", "alpha": 2.0, "solver": "newton", "max_iter": 50, "ridge": 1e-10}
MEAN = {"name": "mean"}


def fairgrad(alpha: float) -> dict[str, Any]:
    return {**FAIRGRAD, "alpha": alpha}


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row that starts with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in the report")


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC

