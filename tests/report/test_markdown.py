"""mtrl_fair.report.markdown: number formats, and the layout of report.md and its plot files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from report_checks import FAIRGRAD, MEAN, assert_png, finished, run_main, table_row

from mtrl_fair.report import format_mean_se, format_percent, mean_and_se


def test_format_mean_se_of_a_single_value() -> None:
    mean, se = mean_and_se([0.25])
    assert mean == 0.25
    assert math.isnan(se)
    assert format_mean_se(mean, se) == "25.0 ± –"
    assert format_percent(float("nan")) == "–"


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
