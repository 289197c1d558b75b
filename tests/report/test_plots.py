"""mtrl_fair.report.plots: curves over seeds, and figures that stay readable with long labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_checks import FAIRGRAD, MEAN, assert_png, finished, make_run, run_main

from mtrl_fair.report import load_runs, plots


def test_seeds_with_different_evaluation_steps_share_a_curve(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", combiner=MEAN, seed=0, evals={1000: [0.2] * 3, 2000: [0.4] * 3})
    b = make_run(
        tmp_path / "b", combiner=MEAN, seed=1, evals={1000: [0.4] * 3, 1500: [0.1] * 3, 2000: [0.6] * 3}
    )
    steps, values = plots._common_curve(load_runs([a, b]))
    np.testing.assert_array_equal(steps, [3000, 6000])
    np.testing.assert_allclose(values, [[0.2, 0.4], [0.4, 0.6]])


@pytest.mark.filterwarnings("error::UserWarning")  # matplotlib warns when a layout collapses the axes
def test_long_method_labels_keep_the_plots_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed, (tau, lr) in enumerate([(0.005, 3e-4), (0.01, 1e-3), (0.02, 3e-3)]):
        agent = {
            "hidden_sizes": [400 + seed] * 3,
            "tau": tau,
            "actor_lr": lr,
            "critic_lr": lr,
            "temperature_lr": lr,
            "batch_size_per_task": 128 + seed,
            "buffer_size_per_task": 100_000 + seed,
            "gamma": 0.99 - seed / 100,
        }
        finished(tmp_path / "runs" / f"r{seed}", FAIRGRAD, seed, [1.0, 0.5, 0.0], agent=agent)
    out = tmp_path / "out"
    assert run_main(capsys, tmp_path / "runs", "--out", out)[0] == 0
    text = (out / "report.md").read_text()
    assert "agent.tau=0.01, agent.temperature_lr=0.001)" in text
    for name in ("curves.png", "per_task.png"):
        assert_png(out / name)
