"""mtrl_fair.report.runs: finding run directories, reading and scoring runs, labelling them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_checks import FAIRGRAD, MEAN, STEPS, TASKS, fairgrad, finished, make_run

from mtrl_fair.report import ReportError, load_runs, parse_metrics_lines


def test_parse_metrics_lines_skips_torn_and_stepless_lines() -> None:
    lines = ['{"step": 2, "a": 1}', '{"step": 1}', "", '{"a": 3}', "[1, 2]", '{"step": 3, "a"']
    assert [r["step"] for r in parse_metrics_lines(lines)] == [1, 2]


def test_load_run_reads_curves_and_final_scores(tmp_path: Path) -> None:
    run_dir = finished(tmp_path / "run", FAIRGRAD, 3, [1.0, 0.5, 0.0])
    (run,) = load_runs([run_dir])
    assert run.run_dir == run_dir.resolve()
    assert (run.benchmark, run.tasks, run.seed, run.steps) == ("MT10", TASKS, 3, STEPS)
    assert run.method == "fairgrad"
    assert run.combiner == FAIRGRAD
    # Environment steps at the evaluation points only; the torn last line is ignored.
    np.testing.assert_array_equal(run.curve_steps, [3000, 6000, 9000])
    np.testing.assert_allclose(run.curve_success, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(run.curve_per_task["push-v3"], [0.0, 0.25, 0.5])
    assert run.final_per_task == {"reach-v3": 1.0, "push-v3": 0.5, "pick-place-v3": 0.0}
    assert run.complete
    assert run.last_step == STEPS
    assert run.final_source == "final_eval.json"
    assert run.mean_success == pytest.approx(0.5)


def test_incomplete_runs_use_their_last_evaluation(tmp_path: Path) -> None:
    killed = make_run(
        tmp_path / "killed", combiner=MEAN, seed=0, evals={1000: [0.1, 0.2, 0.3], 2000: [0.4, 0.5, 0.6]}
    )
    # A final evaluation from before the run was extended to more steps: stale, so not complete.
    extended = finished(tmp_path / "extended", MEAN, 1, [0.2, 0.2, 0.2], steps=2 * STEPS)
    by_seed = {r.seed: r for r in load_runs([tmp_path])}
    assert not by_seed[0].complete
    assert by_seed[0].final_per_task == {"reach-v3": 0.4, "push-v3": 0.5, "pick-place-v3": 0.6}
    assert (by_seed[0].final_source, by_seed[0].final_step, by_seed[0].last_step) == (
        "metrics.jsonl",
        2000,
        2000,
    )
    assert not by_seed[1].complete
    assert by_seed[1].final_source == "final_eval.json"
    assert by_seed[0].run_dir == killed.resolve()
    assert by_seed[1].run_dir == extended.resolve()


def test_tasks_of_a_whole_benchmark_come_from_the_evaluations(tmp_path: Path) -> None:
    with_final = finished(tmp_path / "a", MEAN, 0, [0.1, 0.2, 0.3], config_tasks=False)
    without = make_run(
        tmp_path / "b", combiner=MEAN, seed=1, evals={1000: [0.1, 0.2, 0.3]}, config_tasks=False
    )
    runs = load_runs([with_final, without])
    assert [r.tasks for r in runs] == [TASKS, TASKS]


def test_load_runs_finds_nested_runs_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    a = finished(sweep / "0", fairgrad(1.0), 0, [1.0, 1.0, 1.0])
    b = finished(sweep / "1", fairgrad(2.0), 0, [0.5, 0.5, 0.5])
    c = finished(sweep / "deeper" / "nested" / "2", MEAN, 0, [0.0, 0.5, 1.0])
    # Hydra's own folder holds a config.yaml but no metrics: not a run.
    (sweep / "0" / ".hydra").mkdir()
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    expected = [a.resolve(), b.resolve(), c.resolve()]
    assert [r.run_dir for r in load_runs([sweep])] == expected
    # The same run given directly, through its sweep and through a path with ".." counts once.
    again = load_runs([a, sweep, sweep / "deeper" / "..", a])
    assert [r.run_dir for r in again] == expected


def test_runs_without_an_evaluation_are_left_out(tmp_path: Path) -> None:
    finished(tmp_path / "done", MEAN, 0, [0.5, 0.5, 0.5])
    make_run(tmp_path / "starting", combiner=MEAN, seed=1, evals={})
    skipped: list[tuple[Path, str]] = []
    runs = load_runs([tmp_path], skipped=skipped)
    assert [r.seed for r in runs] == [0]
    assert skipped == [((tmp_path / "starting").resolve(), "no evaluation yet")]
    with pytest.raises(ReportError, match="has an evaluation yet"):
        load_runs([tmp_path / "starting"])


def test_labels_are_made_within_each_task_set(tmp_path: Path) -> None:
    # Different networks in two task sets are not pooled anyway, so they do not lengthen the labels.
    finished(tmp_path / "a", FAIRGRAD, 0, [1.0, 0.5, 0.0], agent={"hidden_sizes": [400, 400]})
    finished(tmp_path / "b", FAIRGRAD, 0, [1.0, 0.5], tasks=TASKS[:2], agent={"hidden_sizes": [32, 32]})
    finished(tmp_path / "c", MEAN, 0, [1.0, 0.5], tasks=TASKS[:2], agent={"hidden_sizes": [32, 32]})
    runs = load_runs([tmp_path])
    assert sorted(run.method for run in runs) == ["fairgrad", "fairgrad", "mean"]
