"""Tests of mtrl_fair.agents.progress: the bar runs end to end and shows the final count when closed."""

from __future__ import annotations

import pytest

from mtrl_fair.agents import progress
from mtrl_fair.agents.progress import ProgressBar


def test_many_quick_updates_a_note_and_close() -> None:
    bar = ProgressBar(5_000, label="test")
    for done in range(1, 5_001):
        bar.update(done, status=f"step {done}")
    bar.note("evaluating …")
    assert bar._bar.tasks[0].fields["status"] == "evaluating …"
    bar.close()
    task = bar._bar.tasks[0]
    assert task.total == 5_000
    assert task.completed == 5_000
    assert task.fields["rate"].endswith("it/s")


def test_updates_are_drawn_at_most_every_so_often_and_close_draws_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "_REFRESH_SECONDS", 1e12)  # no redraw between updates
    bar = ProgressBar(100, start=40)  # a resumed run
    for done in range(41, 91):
        bar.update(done)
    assert bar._bar.tasks[0].completed == 40, "redrawn although the last draw was just now"
    bar.close()
    assert bar._bar.tasks[0].completed == 90


def test_a_status_stays_until_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_REFRESH_SECONDS", 0.0)  # every update is drawn
    bar = ProgressBar(10)
    bar.update(1, status="success 0.50")
    assert bar._bar.tasks[0].fields["status"] == "success 0.50"
    assert bar._bar.tasks[0].completed == 1
    bar.update(2)  # drawn, without a new status: the old one stays
    assert bar._bar.tasks[0].fields["status"] == "success 0.50"
    bar.close()
    assert bar._bar.tasks[0].fields["status"] == "success 0.50"
    assert bar._bar.tasks[0].completed == 2
