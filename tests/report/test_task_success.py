"""Tests of one run's evaluation figure: the per-task curves read from metrics.jsonl, and eval.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtrl_fair.report.plots import plot_task_success
from mtrl_fair.report.runs import task_eval_curves


def write_metrics(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_curves_hold_every_evaluation_of_each_task(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(
        metrics,
        [
            {"step": 100, "losses/critic/a": 1.0},
            {"step": 200, "charts/eval_success_rate/a": 0.2, "charts/eval_success_rate/b": 0.0},
            {"step": 300, "charts/eval_success_rate/a": 0.6},
            {"step": 400, "charts/eval_success_rate/a": 1.0, "charts/eval_success_rate/b": 0.5},
        ],
    )
    with metrics.open("a") as handle:
        handle.write('{"step": 500, "charts/eval_su')  # cut short by a kill
    curves = task_eval_curves(metrics, ["a", "b", "c"])
    assert set(curves) == {"a", "b"}  # c was never evaluated
    np.testing.assert_array_equal(curves["a"][0], [200, 300, 400])
    np.testing.assert_array_equal(curves["a"][1], [0.2, 0.6, 1.0])
    np.testing.assert_array_equal(curves["b"][0], [200, 400])
    assert task_eval_curves(tmp_path / "absent.jsonl", ["a"]) == {}


def test_the_picture_widens_when_there_are_curves(tmp_path: Path) -> None:
    per_task = {"reach-v3": 0.9, "drawer-close-v3": 0.4, "button-press-topdown-v3": 0.0}
    bars, both = tmp_path / "bars.png", tmp_path / "both.png"
    plot_task_success(per_task, bars, title="MT10, iteration 40000")
    curves = {task: (np.array([1e4, 2e4]), np.array([0.1, value])) for task, value in per_task.items()}
    plot_task_success(per_task, both, curves=curves)
    with Image.open(bars) as alone, Image.open(both) as beside:
        assert alone.format == beside.format == "PNG"
        assert beside.size[0] > alone.size[0] + 400
        assert beside.size[1] == alone.size[1]
