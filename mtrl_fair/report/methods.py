"""Runs pooled into methods, and each method's statistics.

Runs are compared only within one benchmark and task set (a :class:`Group`); within a group, the runs
that share a method label are that method's seeds (a :class:`MethodSummary`). Fairness across tasks
is reported as the worst-task success and Jain's index of the per-task success.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrl_fair.report.labels import format_value
from mtrl_fair.report.runs import RunRecord, _group_key
from mtrl_fair.report.stats import (
    FloatArray,
    batched_iqm,
    iqm,
    jain_index,
    mean_and_se,
    stratified_bootstrap_ci,
)


def _order_key(value: Any) -> tuple[int, float, str]:
    """Numbers sort by value (so alpha=2 precedes alpha=10), everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def method_order(runs: Sequence[RunRecord]) -> list[str]:
    """The method labels of ``runs``, each once: ``mean`` (the usual baseline) first, then by name and value."""
    keys = {}
    for run in runs:
        params = tuple((k, _order_key(v)) for k, v in run.method_params.items())
        keys[run.method] = (run.combiner_name != "mean", run.combiner_name, params)
    return sorted(keys, key=lambda label: keys[label])


@dataclass(frozen=True)
class MethodSummary:
    """The statistics of one method's runs on one task set.

    Attributes:
        label: The method label.
        runs: The method's runs.
        tasks: The task order of ``scores``' columns.
        scores: Final success, one row per run, one column per task.
        mean: Mean over runs of each run's mean success.
        se: Standard error of ``mean`` across runs (nan for one run).
        iqm: Interquartile mean of all entries of ``scores``.
        ci: Stratified-bootstrap percentile interval of ``iqm``.
        task_mean: Per-task success averaged over runs.
        task_se: Standard error of ``task_mean`` across runs (nan for one run).
        worst_task: The task with the lowest ``task_mean``.
        jain: Jain's index of ``task_mean``.
    """

    label: str
    runs: list[RunRecord]
    tasks: list[str]
    scores: FloatArray
    mean: float
    se: float
    iqm: float
    ci: tuple[float, float]
    task_mean: FloatArray
    task_se: FloatArray
    worst_task: str
    jain: float

    @property
    def worst(self) -> float:
        """Success on the worst task, averaged over runs."""
        return float(self.task_mean[self.tasks.index(self.worst_task)])

    @property
    def worst_se(self) -> float:
        """Standard error across runs of the success on the worst task."""
        return float(self.task_se[self.tasks.index(self.worst_task)])


def summarise_method(
    label: str,
    runs: Sequence[RunRecord],
    tasks: Sequence[str],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MethodSummary:
    """Scores and statistics of one method's runs on ``tasks``.

    The bootstrap generator is seeded from ``seed`` and the label, so a method's interval depends only
    on its own runs: adding another method to a sweep does not move it.
    """
    scores = np.array([[run.final_per_task[t] for t in tasks] for run in runs], dtype=np.float64)
    mean, se = mean_and_se(scores.mean(axis=1))
    per_task = [mean_and_se(scores[:, j]) for j in range(len(tasks))]
    task_mean = np.array([m for m, _ in per_task], dtype=np.float64)
    task_se = np.array([s for _, s in per_task], dtype=np.float64)
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    return MethodSummary(
        label=label,
        runs=list(runs),
        tasks=list(tasks),
        scores=scores,
        mean=mean,
        se=se,
        iqm=iqm(scores),
        ci=stratified_bootstrap_ci(scores, batched_iqm, reps, confidence, rng),
        task_mean=task_mean,
        task_se=task_se,
        worst_task=tasks[int(np.argmin(task_mean))],
        jain=jain_index(task_mean),
    )


@dataclass(frozen=True)
class Group:
    """The runs of one benchmark and task set, summarised per method.

    Attributes:
        benchmark: The benchmark name.
        tasks: The task names (in the first run's order).
        slug: A file-name prefix for the group's plots (empty when the report has one group).
        methods: One summary per method, in :func:`method_order`.
    """

    benchmark: str
    tasks: list[str]
    slug: str
    methods: list[MethodSummary]

    @property
    def runs(self) -> list[RunRecord]:
        """All runs of the group, method by method."""
        return [run for m in self.methods for run in m.runs]


def group_runs(runs: Sequence[RunRecord], *, reps: int, confidence: float, seed: int) -> list[Group]:
    """Runs split by (benchmark, task set), each part summarised per method."""
    parts: dict[tuple[str, tuple[str, ...]], list[RunRecord]] = {}
    for run in runs:
        parts.setdefault(_group_key(run), []).append(run)
    keys = sorted(parts, key=lambda k: (k[0], len(k[1]), k[1]))
    slugs: list[str] = []
    for benchmark, task_set in keys:
        slug = f"{benchmark.lower()}-{len(task_set)}-tasks"
        slugs.append(slug if slug not in slugs else f"{slug}-{len(slugs) + 1}")
    groups = []
    for key, slug in zip(keys, slugs, strict=True):
        members = parts[key]
        tasks = members[0].tasks
        methods = [
            summarise_method(
                label,
                [r for r in members if r.method == label],
                tasks,
                reps=reps,
                confidence=confidence,
                seed=seed,
            )
            for label in method_order(members)
        ]
        groups.append(Group(key[0], list(tasks), slug if len(keys) > 1 else "", methods))
    return groups


def alpha_series(group: Group) -> list[list[tuple[float, MethodSummary]]]:
    """FairGrad methods of ``group`` that differ only in ``alpha``: each series sorted by alpha.

    Only series with at least two alpha values are returned: those are the ones that trace the
    trade-off between mean and worst-task success.
    """
    series: dict[tuple[Any, ...], list[tuple[float, MethodSummary]]] = {}
    for method in group.methods:
        run = method.runs[0]
        alpha = run.combiner.get("alpha")
        if run.combiner_name != "fairgrad" or isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            continue
        rest = tuple(sorted((k, v) for k, v in run.method_params.items() if k != "alpha"))
        series.setdefault(rest, []).append((float(alpha), method))
    return [sorted(s, key=lambda p: p[0]) for s in series.values() if len({a for a, _ in s}) >= 2]
