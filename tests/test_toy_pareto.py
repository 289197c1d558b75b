"""Tests of scripts/toy_pareto.py: the CAGrad toy problem, its trajectories and the figure."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from mtrl_fair.combiners import make

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "toy_pareto.py"


@pytest.fixture(scope="module")
def toy() -> Iterator[ModuleType]:
    """The script, imported as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("toy_pareto", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _losses(toy: ModuleType, x1: float, x2: float) -> np.ndarray:
    return toy.toy_losses(torch.tensor([x1, x2], dtype=torch.float64)).numpy()


def test_losses_at_known_points(toy: ModuleType) -> None:
    # x₂ = 0: both gates c₁, c₂ vanish.
    np.testing.assert_allclose(_losses(toy, 0.0, 0.0), [0.0, 0.0], atol=1e-15)
    # (7, −8): g₁ = −20 exactly, g₂ = 14²/10 − 20 = −0.4; only c₂ = tanh(4) is on.
    np.testing.assert_allclose(_losses(toy, 7.0, -8.0), [-20 * math.tanh(4), -0.4 * math.tanh(4)], rtol=1e-12)
    # (−5, 10): the bottom of task 1's valley, where its log-distance is clamped at 5e-6;
    # task 2's log-distance there is |4 − tanh(10) + 2|.
    c1 = math.tanh(5.0)
    expected = [c1 * (math.log(5e-6) + 6), c1 * (math.log(6 - math.tanh(10.0)) + 6)]
    np.testing.assert_allclose(_losses(toy, -5.0, 10.0), expected, rtol=1e-12)


def test_tasks_are_mirror_images(toy: ModuleType) -> None:
    x = torch.empty(200, 2, dtype=torch.float64).uniform_(-10, 10, generator=torch.Generator().manual_seed(0))
    mirrored = x * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    losses, mirrored_losses = toy.toy_losses(x), toy.toy_losses(mirrored)
    torch.testing.assert_close(losses[:, 0], mirrored_losses[:, 1], rtol=1e-12, atol=1e-12)


def test_jacobian_matches_autograd_and_is_finite(toy: ModuleType) -> None:
    points = torch.tensor([*toy.STARTS, (3.0, -8.0), (-5.0, 10.0)], dtype=torch.float64)
    losses, jacobian = toy.toy_jacobian(points)
    assert jacobian.shape == (len(points), 2, 2)
    assert torch.isfinite(jacobian).all()
    for point, point_losses, point_jacobian in zip(points, losses, jacobian, strict=True):
        torch.testing.assert_close(point_losses, toy.toy_losses(point))
        torch.testing.assert_close(point_jacobian, torch.func.jacrev(toy.toy_losses)(point))


def test_fairgrad_decreases_both_losses_where_mean_does_not(toy: ModuleType) -> None:
    # At (3, −8) the two quadratic bowls pull x₁ in opposite directions: the mean's step raises L₁,
    # FairGrad's rates gᵢᵀd = wᵢ^(-1/α) are positive for both tasks.
    _, jacobian = toy.toy_jacobian(torch.tensor([3.0, -8.0], dtype=torch.float64))
    mean_rates = jacobian @ make("mean")(jacobian)
    fair_rates = jacobian @ make("fairgrad", alpha=2.0)(jacobian)
    assert mean_rates.min() < 0
    assert fair_rates.min() > 0


def test_mean_trajectory_decreases_the_mean_loss(toy: ModuleType) -> None:
    starts = [(10.0, -8.0), (-8.5, 7.5)]
    paths = toy.run_trajectories([make("mean"), make("mean")], starts, 150, 0.04)
    assert paths.shape == (2, 151, 2)
    np.testing.assert_array_equal(paths[:, 0], starts)
    mean_loss = toy.toy_losses(torch.as_tensor(paths)).mean(dim=-1)
    assert (mean_loss[:, -1] < mean_loss[:, 0] - 1.0).all()


def test_fairgrad_trajectory_is_finite_and_lowers_the_worst_loss(toy: ModuleType) -> None:
    path = toy.run_trajectory(make("fairgrad", alpha=2.0), (9.0, 9.0), 150, 0.04)
    assert path.shape == (151, 2)
    assert np.isfinite(path).all()
    worst = toy.toy_losses(torch.as_tensor(path)).max(dim=-1).values
    assert worst[-1] < worst[0] - 1.0


def test_famo_learns_from_after_step(toy: ModuleType) -> None:
    famo = make("famo")
    path = toy.run_trajectory(famo, (-8.5, 5.0), 20, 0.04)
    assert np.isfinite(path).all()
    logits = famo.state_dict()["logits"]
    assert logits.abs().max() > 0  # after_step was called with the losses at the new points


def test_pareto_front(toy: ModuleType) -> None:
    front = toy.pareto_front(toy.loss_grid(size=201))
    assert len(front.points) > 10
    assert (np.diff(front.losses[:, 0]) > 0).all()
    assert (np.diff(front.losses[:, 1]) < 0).all()
    # The front is the bottom of the quadratic basin, x₂ ≈ −8, from x₁ = −7 to 7.
    assert np.all(np.abs(front.points[:, 1] + 8.3) < 0.5)
    balanced = _losses(toy, 0.0, -8.36)
    assert toy.front_gap(balanced, front) <= 1e-3
    assert toy.front_gap(_losses(toy, -5.0, 10.0), front) > 10  # a valley of the upper half


def test_parse_method(toy: ModuleType) -> None:
    assert toy.parse_method("mean") == ("mean", {})
    assert toy.parse_method("fairgrad:alpha=2,solver=newton") == (
        "fairgrad",
        {"alpha": 2, "solver": "newton"},
    )
    # A registry name with a colon of its own is a name, not a name and hyperparameters.
    assert toy.parse_method("torchjd:UPGrad") == ("torchjd:UPGrad", {})
    with pytest.raises(ValueError, match="unknown combiner"):
        toy.parse_method("nope")
    with pytest.raises(ValueError, match="key=value"):
        toy.parse_method("fairgrad:2")


def test_main_writes_png_and_json(
    toy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = tmp_path / "toy.png", tmp_path / "toy.json"
    argv = ["--steps", "3", "--methods", "mean", "fairgrad:alpha=2", "famo"]
    assert toy.main([*argv, "--out", str(out), "--json", str(record)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(record.read_text())
    assert [m["method"] for m in data["methods"]] == ["mean", "fairgrad:alpha=2", "famo"]
    for method in data["methods"]:
        assert len(method["runs"]) == len(toy.STARTS)
        assert all(np.isfinite(run["losses"]).all() for run in method["runs"])
    printed = capsys.readouterr().out
    assert "on front" in printed
    assert "fairgrad:alpha=2" in printed
