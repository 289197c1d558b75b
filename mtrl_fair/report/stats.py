"""The report's statistics, as pure functions of numpy arrays (no file I/O).

The aggregate statistics follow Agarwal et al., "Deep Reinforcement Learning at the Edge of the
Statistical Precipice" (NeurIPS 2021): the interquartile mean (IQM) of all run × task scores, with a
percentile confidence interval from a stratified bootstrap that resamples runs independently within
each task. They are implemented here in numpy; the authors' ``rliable`` package would be the natural
dependency, but the release we tried fails at import with pandas 3, and the method is short.
Fairness across tasks is measured by Jain's index of the per-task success.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Bound on the floats a bootstrap holds at once (2**21 doubles = 16 MiB); the resamples are drawn in
# chunks of this size, so MT50 sweeps with many seeds cannot exhaust memory.
_BOOTSTRAP_CHUNK_ELEMENTS = 2**21


def _trimmed_rows(rows: FloatArray) -> FloatArray:
    """The 25 % trimmed mean of each row: int(n/4) values cut from each end, as scipy.stats.trim_mean."""
    n = rows.shape[-1]
    cut = int(0.25 * n)
    return np.sort(rows, axis=-1)[:, cut : n - cut].mean(axis=-1)


def iqm(scores: npt.ArrayLike) -> float:
    """Interquartile mean of all entries of a (runs × tasks) score matrix.

    The mean of the middle half of the pooled scores: the 25 % trimmed mean of the flattened matrix,
    with ``int(0.25 n)`` values cut from each end (as ``scipy.stats.trim_mean(x.ravel(), 0.25)``).
    Robust to outlier runs like a median, yet uses half of the data like a mean (Agarwal et al., 2021).
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(1, -1)
    if flat.size == 0:
        raise ValueError("iqm of an empty score matrix")
    return float(_trimmed_rows(flat)[0])


def batched_iqm(samples: FloatArray) -> FloatArray:
    """The IQM of each matrix in a stack of shape (reps, runs, tasks): one value per matrix."""
    return _trimmed_rows(samples.reshape(samples.shape[0], -1))


def batched_mean(samples: FloatArray) -> FloatArray:
    """The mean of each matrix in a stack of shape (reps, runs, tasks): one value per matrix."""
    return samples.reshape(samples.shape[0], -1).mean(axis=1)


def stratified_bootstrap_ci(
    scores: npt.ArrayLike,
    statistic: Callable[[FloatArray], FloatArray] = batched_iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | int | None = None,
) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` from a stratified bootstrap over runs.

    Each resample draws, for every task (column) independently, as many run indices as there are
    runs, with replacement: the stratified bootstrap of Agarwal et al. (2021), which keeps every task
    represented with its own number of runs. ``statistic`` maps a stack of resampled matrices of shape
    (reps, runs, tasks) to one value each (e.g. :func:`batched_iqm`, :func:`batched_mean`), so all
    resamples are scored at once. The interval is the ``(1 ± confidence) / 2`` percentiles.

    With one run every resample equals the data and the interval is degenerate (a single point).
    """
    data = np.asarray(scores, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"scores must be a non-empty (runs × tasks) matrix, got shape {data.shape}")
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    generator = np.random.default_rng(rng)
    n_runs, n_tasks = data.shape
    columns = np.arange(n_tasks)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // data.size)
    values = []
    for start in range(0, reps, chunk):
        count = min(chunk, reps - start)
        rows = generator.integers(0, n_runs, size=(count, n_runs, n_tasks))
        values.append(np.asarray(statistic(data[rows, columns]), dtype=np.float64))
    stats = np.concatenate(values)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_and_se(values: npt.ArrayLike) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` of ``values``; the SE of a single value is nan."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        return math.nan, math.nan
    se = float(data.std(ddof=1) / math.sqrt(data.size)) if data.size > 1 else math.nan
    return float(data.mean()), se


def jain_index(x: npt.ArrayLike) -> float:
    """Jain's fairness index ``(Σx)² / (n Σx²)`` of non-negative per-task success rates.

    1 when every task succeeds equally, down to 1/n when a single task carries all the success. It is
    undefined (0/0) when every entry is zero: that returns nan rather than calling total failure fair.
    """
    data = np.asarray(x, dtype=np.float64).ravel()
    squares = float(np.sum(data**2))
    if data.size == 0 or squares == 0.0:
        return math.nan
    return float(np.sum(data) ** 2 / (data.size * squares))
