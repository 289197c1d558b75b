"""``mtrl-fair report``: loading runs, method labels, the statistics, and the report end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import trim_mean

from mtrl_fair import report
from mtrl_fair.report import (
    batched_iqm,
    batched_mean,
    format_mean_se,
    format_percent,
    format_value,
    iqm,
    jain_index,
    label_methods,
    load_runs,
    main,
    mean_and_se,
    method_order,
    parse_metrics_lines,
    stratified_bootstrap_ci,
)

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


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


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
    with pytest.raises(report.ReportError, match="has an evaluation yet"):
        load_runs([tmp_path / "starting"])


# ----------------------------------------------------------------------------------------------------
# Method labels
# ----------------------------------------------------------------------------------------------------


def test_format_value_is_compact() -> None:
    assert [format_value(v) for v in (2.0, 0.5, 1e-10, 3, True, None, [1.0, "a"])] == [
        "2",
        "0.5",
        "1e-10",
        "3",
        "true",
        "null",
        "[1, a]",
    ]


def test_labels_name_only_the_swept_hyperparameters(tmp_path: Path) -> None:
    for seed in (0, 1):
        finished(tmp_path / f"a1_s{seed}", fairgrad(1.0), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"a2_s{seed}", fairgrad(2.0), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"a05_s{seed}", fairgrad(0.5), seed, [1.0, 1.0, 1.0])
        finished(tmp_path / f"mean_s{seed}", MEAN, seed, [1.0, 1.0, 1.0])
    runs = load_runs([tmp_path])
    assert method_order(runs) == ["mean", "fairgrad (alpha=0.5)", "fairgrad (alpha=1)", "fairgrad (alpha=2)"]
    assert {r.method for r in runs if r.seed == 0} == set(method_order(runs))


def test_a_single_config_is_labelled_by_its_name() -> None:
    agent = {"tau": 0.005}
    labels = label_methods([(FAIRGRAD, agent, 100), (FAIRGRAD, agent, 100), (MEAN, agent, 100)])
    assert [label for label, _ in labels] == ["fairgrad", "fairgrad", "mean"]


def test_labels_order_numbers_by_value_and_show_agent_and_steps() -> None:
    agent = {"tau": 0.005, "hidden_sizes": [400, 400]}
    configs = [
        (fairgrad(10.0), agent, 100),
        (fairgrad(2.0), agent, 100),
        (FAIRGRAD, {**agent, "tau": 0.01}, 200),
        ({"name": "fairgrad", "alpha": 2.0}, agent, 100),  # an older config without the solver keys
    ]
    labels = [label for label, _ in label_methods(configs)]
    assert labels[0] == "fairgrad (alpha=10, agent.tau=0.005, steps=100)"
    assert labels[2] == "fairgrad (alpha=2, agent.tau=0.01, steps=200)"
    # Keys an older config lacks are compared among the configs that have them.
    assert labels[3] == labels[1] == "fairgrad (alpha=2, agent.tau=0.005, steps=100)"


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 3), (3, 3), (5, 10), (7, 3), (4, 4), (10, 50), (3, 1)])
def test_iqm_matches_scipy_trim_mean(shape: tuple[int, int]) -> None:
    scores = np.random.default_rng(sum(shape)).random(shape)
    assert iqm(scores) == pytest.approx(trim_mean(scores.ravel(), 0.25), abs=1e-12)
    stack = np.random.default_rng(1).random((4, *shape))
    np.testing.assert_allclose(batched_iqm(stack), [iqm(m) for m in stack], atol=1e-12)
    np.testing.assert_allclose(batched_mean(stack), stack.reshape(4, -1).mean(axis=1))


def test_iqm_ignores_the_outer_quartiles() -> None:
    assert iqm([[0.0, 0.5, 0.5, 1.0], [-100.0, 0.5, 0.5, 100.0]]) == pytest.approx(0.5)


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible() -> None:
    scores = np.random.default_rng(0).beta(2, 2, size=(5, 10))
    low, high = stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 7)
    assert low < iqm(scores) < high
    assert stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 7) == (low, high)
    assert stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.95, 8) != (low, high)
    narrower = stratified_bootstrap_ci(scores, batched_iqm, 2000, 0.5, 7)
    assert low <= narrower[0] <= narrower[1] <= high


def test_bootstrap_ci_shrinks_with_more_runs() -> None:
    rng = np.random.default_rng(1)
    few = rng.beta(2, 2, size=(3, 10))
    many = rng.beta(2, 2, size=(60, 10))
    width_few = np.diff(stratified_bootstrap_ci(few, batched_iqm, 2000, 0.95, 0))[0]
    width_many = np.diff(stratified_bootstrap_ci(many, batched_iqm, 2000, 0.95, 0))[0]
    assert width_many < width_few / 2


def test_bootstrap_ci_is_degenerate_without_variation() -> None:
    assert stratified_bootstrap_ci(np.full((4, 3), 0.7), batched_iqm, 500, 0.95, 0) == pytest.approx(
        (0.7, 0.7)
    )
    one_run = np.array([[0.1, 0.9, 0.4]])
    assert stratified_bootstrap_ci(one_run, batched_mean, 500, 0.95, 0) == pytest.approx((1.4 / 3, 1.4 / 3))


def test_bootstrap_resamples_runs_within_each_task() -> None:
    # Column j holds 10 j + run: a resampled value must come from its own column.
    scores = np.arange(4)[:, None] + 10.0 * np.arange(3)[None, :]
    seen = []

    def record(samples: np.ndarray) -> np.ndarray:
        seen.append(samples)
        return samples.reshape(len(samples), -1).mean(axis=1)

    stratified_bootstrap_ci(scores, record, 300, 0.9, 0)
    samples = np.concatenate(seen)
    assert samples.shape == (300, 4, 3)
    np.testing.assert_array_equal(samples // 10, np.broadcast_to(np.arange(3), samples.shape))
    # Runs are drawn independently per task: rows mix runs, unlike a plain run bootstrap.
    assert np.any(samples % 10 != (samples % 10)[..., :1])


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci(np.ones((2, 2)), batched_iqm, 10, 1.0, 0)
    with pytest.raises(ValueError, match="reps"):
        stratified_bootstrap_ci(np.ones((2, 2)), batched_iqm, 0, 0.9, 0)
    with pytest.raises(ValueError, match="matrix"):
        stratified_bootstrap_ci(np.ones(3), batched_iqm, 10, 0.9, 0)


def test_mean_and_se() -> None:
    mean, se = mean_and_se([0.5, 1 / 3])
    assert mean == pytest.approx(5 / 12)
    assert se == pytest.approx(np.std([0.5, 1 / 3], ddof=1) / math.sqrt(2))
    mean, se = mean_and_se([0.25])
    assert mean == 0.25
    assert math.isnan(se)
    assert format_mean_se(mean, se) == "25.0 ± –"
    assert format_percent(float("nan")) == "–"


def test_jain_index_edge_cases() -> None:
    assert jain_index([0.3, 0.3, 0.3]) == pytest.approx(1.0)
    assert jain_index([0.0, 1.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert math.isnan(jain_index([0.0, 0.0]))
    assert jain_index([0.75, 0.5, 0.0]) == pytest.approx(1.5625 / 2.4375)
    for x in np.random.default_rng(0).random((50, 7)):
        assert 1 / 7 - 1e-12 <= jain_index(x) <= 1 + 1e-12


# ----------------------------------------------------------------------------------------------------
# The report end to end
# ----------------------------------------------------------------------------------------------------


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


def alpha_sweep(root: Path) -> None:
    """mean and FairGrad at alpha 1 and 2, two seeds each; one FairGrad run killed before the end."""
    finished(root / "mean_s0", MEAN, 0, [1.0, 0.5, 0.0])
    finished(root / "mean_s1", MEAN, 1, [0.5, 0.5, 0.0])
    finished(root / "a1" / "s0", fairgrad(1.0), 0, [0.8, 0.6, 0.4])
    finished(root / "a1" / "s1", fairgrad(1.0), 1, [0.6, 0.6, 0.6])
    finished(root / "a2" / "s0", fairgrad(2.0), 0, [0.9, 0.7, 0.5])
    make_run(root / "a2" / "s1", combiner=fairgrad(2.0), seed=1, evals={1000: [0.0] * 3, 2000: [0.5] * 3})


def test_report_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    alpha_sweep(sweep)
    out = tmp_path / "report"
    code, stdout, stderr = run_main(capsys, sweep, "--out", out, "--bootstrap-reps", "500")
    assert code == 0, stderr
    assert str(out / "report.md") in stdout
    text = (out / "report.md").read_text()

    # mean: run means 0.5 and 1/3; SE = std([0.5, 1/3], ddof=1) / sqrt(2) = 1/12; IQM of
    # [0, 0, .5, .5, .5, 1] cuts one value at each end: 0.375; per-task means [.75, .5, 0].
    assert table_row(text, "mean")[:3] == ["mean", "2", "41.7 ± 8.3"]
    assert table_row(text, "mean")[3].startswith("37.5 [")
    assert table_row(text, "mean")[4:] == ["0.0 (pick-place-v3)", "0.641"]
    # alpha=1: both runs average 0.6, so the SE is 0; per-task means [.7, .6, .5].
    assert table_row(text, "fairgrad (alpha=1)")[2:3] == ["60.0 ± 0.0"]
    assert table_row(text, "fairgrad (alpha=1)")[3].startswith("60.0 [")
    assert table_row(text, "fairgrad (alpha=1)")[4:] == ["50.0 (pick-place-v3)", f"{3.24 / 3.3:.3f}"]
    # alpha=2: the killed run counts with its last evaluation (0.5 everywhere): means 0.7 and 0.5.
    assert table_row(text, "fairgrad (alpha=2)")[2] == "60.0 ± 10.0"
    assert table_row(text, "push-v3") == ["push-v3", "50.0", "60.0", "60.0"]
    assert "Incomplete runs (1)" in text
    assert "fairgrad (alpha=2), seed 1, scored at iteration 2000 of 3000" in text
    # mean comes first, then alpha in numeric order.
    assert (
        text.index("| mean |") < text.index("| fairgrad (alpha=1) |") < text.index("| fairgrad (alpha=2) |")
    )

    for name in ("curves.png", "per_task.png", "alpha.png"):
        assert f"]({name})" in text
        assert_png(out / name)
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "curves.png", "per_task.png", "report.md"]


def test_report_intervals_depend_only_on_the_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for seed in range(6):
        finished(tmp_path / f"mean_s{seed}", MEAN, seed, [round(v, 2) for v in rng.random(3)])
    runs = load_runs([tmp_path])
    intervals = [
        report.group_runs(runs, reps=300, confidence=0.9, seed=s)[0].methods[0].ci for s in (0, 0, 5)
    ]
    assert intervals[0] == intervals[1]
    assert intervals[0] != intervals[2]
    # Another method in the same report leaves this method's interval where it was.
    finished(tmp_path / "fg", FAIRGRAD, 0, [0.5, 0.5, 0.5])
    (group,) = report.group_runs(load_runs([tmp_path]), reps=300, confidence=0.9, seed=0)
    assert [m.label for m in group.methods] == ["mean", "fairgrad"]
    assert group.methods[0].ci == intervals[0]


def test_single_config_has_no_alpha_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished(tmp_path / "runs" / "fg", FAIRGRAD, 0, [1.0, 0.0, 0.5])
    finished(tmp_path / "runs" / "mean", MEAN, 0, [1.0, 0.0, 0.0])
    out = tmp_path / "out"
    code, _, stderr = run_main(capsys, tmp_path / "runs", "--out", out)
    assert code == 0, stderr
    text = (out / "report.md").read_text()
    # One seed: no standard error and no bootstrap interval.
    assert table_row(text, "fairgrad")[2:4] == ["50.0 ± –", "50.0 [–]"]
    assert table_row(text, "mean")[5] == f"{1 / 3:.3f}"
    assert not (out / "alpha.png").exists()
    assert "alpha.png" not in text
    assert_png(out / "curves.png")
    assert_png(out / "per_task.png")


def test_each_task_set_gets_its_own_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished(tmp_path / "runs" / "mt10", MEAN, 0, [1.0, 0.5, 0.0])
    finished(tmp_path / "runs" / "two", MEAN, 0, [1.0, 0.5], tasks=["reach-v3", "push-v3"])
    out = tmp_path / "out"
    assert run_main(capsys, tmp_path / "runs", "--out", out)[0] == 0
    text = (out / "report.md").read_text()
    assert "## MT10, 2 tasks" in text
    assert "## MT10, 3 tasks" in text
    for name in ("mt10-2-tasks_curves.png", "mt10-3-tasks_per_task.png"):
        assert f"]({name})" in text
        assert_png(out / name)
    assert not (out / "curves.png").exists()


def test_labels_are_made_within_each_task_set(tmp_path: Path) -> None:
    # Different networks in two task sets are not pooled anyway, so they do not lengthen the labels.
    finished(tmp_path / "a", FAIRGRAD, 0, [1.0, 0.5, 0.0], agent={"hidden_sizes": [400, 400]})
    finished(tmp_path / "b", FAIRGRAD, 0, [1.0, 0.5], tasks=TASKS[:2], agent={"hidden_sizes": [32, 32]})
    finished(tmp_path / "c", MEAN, 0, [1.0, 0.5], tasks=TASKS[:2], agent={"hidden_sizes": [32, 32]})
    runs = load_runs([tmp_path])
    assert sorted(run.method for run in runs) == ["fairgrad", "fairgrad", "mean"]


def test_seeds_with_different_evaluation_steps_share_a_curve(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", combiner=MEAN, seed=0, evals={1000: [0.2] * 3, 2000: [0.4] * 3})
    b = make_run(
        tmp_path / "b", combiner=MEAN, seed=1, evals={1000: [0.4] * 3, 1500: [0.1] * 3, 2000: [0.6] * 3}
    )
    steps, values = report._common_curve(load_runs([a, b]))
    np.testing.assert_array_equal(steps, [3000, 6000])
    np.testing.assert_allclose(values, [[0.2, 0.4], [0.4, 0.6]])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing"], "no such file or directory"),
        (["empty"], "no training runs found under"),
        (["afile.txt"], "is not a directory"),
        (["ok", "--confidence", "1.5"], "--confidence"),
        (["ok", "--bootstrap-reps", "0"], "--bootstrap-reps"),
        (["ok", "--bootstrap-reps", "many"], "invalid int value"),
        (["ok", "missing"], "no such file or directory"),
        (["ok", "empty"], "no training runs found under"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "afile.txt").write_text("x")
    finished(tmp_path / "ok", MEAN, 0, [1.0, 1.0, 1.0])
    out = tmp_path / "out"
    paths = {"missing", "empty", "afile.txt", "ok"}
    code, stdout, stderr = run_main(capsys, *[tmp_path / a if a in paths else a for a in args], "--out", out)
    assert code == 2
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error: ")
    assert message in stderr
    assert not out.exists()


def test_out_must_not_be_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished(tmp_path / "ok", MEAN, 0, [1.0, 1.0, 1.0])
    (tmp_path / "out").write_text("x")
    code, _, stderr = run_main(capsys, tmp_path / "ok", "--out", tmp_path / "out")
    assert code == 2
    assert stderr.startswith("error: ")
    assert "not a directory" in stderr


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
