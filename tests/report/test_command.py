"""``mtrl-fair report`` (mtrl_fair.report.command): the report end to end, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from report_checks import MEAN, assert_png, fairgrad, finished, make_run, run_main, table_row


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


def test_the_package_exports_its_names_and_imports_no_training_code() -> None:
    # The report reads files: importing it must not load torch, the environments or the trainer, and
    # matplotlib only once a figure is drawn.
    code = (
        "import sys, mtrl_fair.report as r; "
        "print([n for n in r.__all__ if not hasattr(r, n)], sorted(m for m in sys.modules if m.split('.')[0] "
        "in {'torch', 'gymnasium', 'metaworld', 'matplotlib'} or m.startswith(('mtrl_fair.agents', "
        "'mtrl_fair.training', 'mtrl_fair.cli', 'mtrl_fair.envs'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] []"
