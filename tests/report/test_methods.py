"""mtrl_fair.report.methods: the order of methods and their per-group summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from report_checks import FAIRGRAD, MEAN, fairgrad, finished

from mtrl_fair.report import load_runs
from mtrl_fair.report.methods import group_runs, method_order


def test_labels_name_only_the_swept_hyperparameters(tmp_path: Path) -> None:
    for seed in (0, 1):
        finished(tmp_path / f"a1_s{seed}", fairgrad(1.0), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"a2_s{seed}", fairgrad(2.0), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"a05_s{seed}", fairgrad(0.5), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"mean_s{seed}", MEAN, seed, [1.0, 1.0, 1.0])
    runs = load_runs([tmp_path])
    assert method_order(runs) == ["mean", "fairgrad (alpha=0.5)", "fairgrad (alpha=1)", "fairgrad (alpha=2)"]
    assert {r.method for r in runs if r.seed == 0} == set(method_order(runs))


def test_report_intervals_depend_only_on_the_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for seed in range(6):
        finished(tmp_path / f"mean_s{seed}", MEAN, seed, [round(v, 2) for v in rng.random(3)])
    runs = load_runs([tmp_path])
    intervals = [
        group_runs(runs, reps=300, confidence=0.9, seed=s)[0].methods[0].ci for s in (0, 0, 5)
    ]
    assert intervals[0] == intervals[1]
    assert intervals[0] != intervals[2]
    # Another method in the same report leaves this method's interval where it was.
    finished(tmp_path / "fg", FAIRGRAD, 0, [0.5, 0.5, 0.5])
    (group,) = group_runs(load_runs([tmp_path]), reps=300, confidence=0.9, seed=0)
    assert [m.label for m in group.methods] == ["mean", "fairgrad"]
    assert group.methods[0].ci == intervals[0]
