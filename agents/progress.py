"""A terminal progress bar of training iterations: rate, time left and a status text (rich)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ProgressBar"]

_REFRESH_SECONDS = 0.25
"""Formatting the bar every iteration would cost more than a vector-env step; it is redrawn at most this often."""


class ProgressBar:
    """Iterations done out of ``total``, iterations/s, time left and a free status text.

    Used by ``MTSAC.learn(progress_bar=True)`` and by ``mtrl-fair train`` (which shows the latest
    success rates in the status). ``start`` is where a resumed run begins; the rate counts only the
    iterations of this process.
    """

    def __init__(self, total: int, *, start: int = 0, label: str = "train") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self._task = self._bar.add_task(label, total=total, completed=start, rate="", status="")
        self._start, self._start_iteration = time.perf_counter(), start
        self._last_refresh, self._iteration = 0.0, start
        self._bar.start()

    def update(self, iteration: int, status: str | None = None) -> None:
        """Record that ``iteration`` iterations are done (redrawn at most every quarter second)."""
        self._iteration = iteration
        now = time.perf_counter()
        if now - self._last_refresh < _REFRESH_SECONDS:
            return
        self._last_refresh = now
        self._redraw(now, status)

    def note(self, text: str) -> None:
        """Show ``text`` as the status now (e.g. "evaluating …" before a long evaluation)."""
        self._bar.update(self._task, status=text)

    def close(self) -> None:
        self._redraw(time.perf_counter(), None)
        self._bar.stop()

    def _redraw(self, now: float, status: str | None) -> None:
        rate = (self._iteration - self._start_iteration) / max(now - self._start, 1e-9)
        # Any: mypy checks a dict[str, str] unpacked here against Progress.update's named parameters.
        fields: dict[str, Any] = {"rate": f"{rate:,.1f} it/s"}
        if status is not None:
            fields["status"] = status
        self._bar.update(self._task, completed=self._iteration, **fields)
