"""Turn finished training runs into a Markdown report with plots.

``mtrl-fair report <sweep-or-run-dirs...> --out DIR`` finds every run directory (one holding
``config.yaml`` and ``metrics.jsonl``) under the given paths, groups the runs by benchmark and task
set, labels each run with its method (the combiner plus the hyperparameters that vary between runs
of that combiner) and writes ``DIR/report.md`` with PNG plots beside it.

A run's score on a task is its final success rate there: from ``final_eval.json`` when the run
finished, otherwise from the last evaluation logged in ``metrics.jsonl`` (such runs are flagged).

The aggregate statistics follow Agarwal et al., "Deep Reinforcement Learning at the Edge of the
Statistical Precipice" (NeurIPS 2021): the interquartile mean (IQM) of all run × task scores, with a
percentile confidence interval from a stratified bootstrap that resamples runs independently within
each task. They are implemented here in numpy; the authors' ``rliable`` package would be the natural
dependency, but the release we tried fails at import with pandas 3, and the method is short.
Fairness across tasks is reported as the worst-task success and Jain's index of the per-task success.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

__all__ = [
    "MethodSummary",
    "ReportError",
    "RunRecord",
    "batched_iqm",
    "batched_mean",
    "find_run_dirs",
    "format_mean_se",
    "format_percent",
    "format_value",
    "iqm",
    "jain_index",
    "label_methods",
    "load_run",
    "load_runs",
    "main",
    "mean_and_se",
    "parse_metrics_lines",
    "stratified_bootstrap_ci",
    "summarise_method",
    "write_report",
]

FloatArray = npt.NDArray[np.float64]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
REPORT_FILE = "report.md"
EVAL_KEY = "charts/eval_success_rate"
EVAL_TASK_PREFIX = EVAL_KEY + "/"
# Shown in tables wherever a number is undefined (one seed's standard error, Jain's index of zeros).
MISSING = "–"
# Bound on the floats a bootstrap holds at once (2**21 doubles = 16 MiB); the resamples are drawn in
# chunks of this size, so MT50 sweeps with many seeds cannot exhaust memory.
_BOOTSTRAP_CHUNK_ELEMENTS = 2**21


class ReportError(Exception):
    """Bad input to the report: a missing path, no runs, an unusable option."""


class UnusableRun(ReportError):
    """A run directory that cannot be scored (unreadable config, no evaluation yet)."""


# ----------------------------------------------------------------------------------------------------
# Loading runs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One training run, reduced to what the report needs.

    Attributes:
        run_dir: The run directory (resolved, absolute).
        benchmark: ``benchmark.name`` of the config, e.g. ``"MT10"``.
        tasks: The run's task names, in the run's order.
        method: The method label, e.g. ``"fairgrad (alpha=2)"`` (see :func:`label_methods`).
        combiner: The ``combiner`` mapping of the config (``name`` plus hyperparameters).
        seed: The run's seed.
        steps: The configured number of training iterations.
        curve_steps: Environment steps at each evaluation logged in ``metrics.jsonl``.
        curve_success: Mean success over tasks at each of those evaluations.
        curve_per_task: Success of each task at each of those evaluations (``nan`` where absent).
        final_per_task: The score of each task: ``final_eval.json`` if present, else the last evaluation.
        complete: Whether ``final_eval.json`` exists and covers all configured iterations.
        last_step: The last training iteration the run logged or evaluated.
        final_step: The iteration at which ``final_per_task`` was measured.
        final_source: ``"final_eval.json"`` or ``"metrics.jsonl"``: where ``final_per_task`` comes from.
        method_params: The hyperparameters that appear in the label (they set this run apart).
        agent: The ``agent`` mapping of the config.
    """

    run_dir: Path
    benchmark: str
    tasks: list[str]
    method: str
    combiner: dict[str, Any]
    seed: int
    steps: int
    curve_steps: FloatArray
    curve_success: FloatArray
    curve_per_task: dict[str, FloatArray]
    final_per_task: dict[str, float]
    complete: bool
    last_step: int
    final_step: int = 0
    final_source: str = FINAL_EVAL_FILE
    method_params: dict[str, Any] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)

    @property
    def combiner_name(self) -> str:
        """The combiner's name, e.g. ``"fairgrad"``."""
        return str(self.combiner.get("name", "unknown"))

    @property
    def mean_success(self) -> float:
        """The run's score: its final success averaged over tasks."""
        return float(np.mean([self.final_per_task[t] for t in self.tasks]))


def find_run_dirs(path: str | Path) -> list[Path]:
    """Every run directory at or below ``path``, sorted; a run directory holds config and metrics.

    Raises:
        ReportError: ``path`` does not exist or is not a directory.
    """
    root = Path(path)
    if not root.exists():
        raise ReportError(f"no such file or directory: {root}")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory (pass a run directory or a sweep directory)")
    found = []
    for current, dirs, files in os.walk(root):
        dirs.sort()  # a deterministic walk, whatever order the file system lists entries in
        if CONFIG_FILE in files and METRICS_FILE in files:
            found.append(Path(current))
    return sorted(found)


def parse_metrics_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The logged points of ``metrics.jsonl``, ordered by ``step``.

    A line that does not parse (a process killed mid-write) or has no integer ``step`` is skipped. A
    step logged twice keeps its last record, as a resumed run's log would.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def _read_config(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    # OmegaConf rather than plain YAML: it is what wrote the file, and it reads floats such as
    # ``1e-10`` as numbers where PyYAML's YAML 1.1 rules would read a string.
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # any parse or interpolation failure makes the run unusable, not the report
        raise UnusableRun(f"cannot read {CONFIG_FILE}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise UnusableRun(f"{CONFIG_FILE} is not a mapping")
    return {str(k): v for k, v in loaded.items()}


def _read_final_eval(path: Path) -> dict[str, Any] | None:
    """``final_eval.json``, or None when it is absent or unreadable (treated as an unfinished run)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config_fields(cfg: Mapping[str, Any]) -> tuple[str, list[str] | None, dict[str, Any], int, int]:
    """Benchmark name, task list (None = all), combiner, seed and steps of a config; checked."""
    bench = cfg.get("benchmark")
    if not isinstance(bench, Mapping) or not isinstance(bench.get("name"), str):
        raise UnusableRun(f"{CONFIG_FILE} has no benchmark.name")
    tasks = bench.get("tasks")
    if tasks is not None and not (
        isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)
    ):
        raise UnusableRun(f"{CONFIG_FILE} has a benchmark.tasks that is not a list of task names")
    combiner = cfg.get("combiner")
    if isinstance(combiner, str):  # a bare name, e.g. written by hand
        combiner = {"name": combiner}
    if not isinstance(combiner, Mapping) or not isinstance(combiner.get("name"), str):
        raise UnusableRun(f"{CONFIG_FILE} has no combiner.name")
    seed, steps = cfg.get("seed"), cfg.get("steps")
    if not isinstance(seed, int) or not isinstance(steps, int):
        raise UnusableRun(f"{CONFIG_FILE} lacks an integer seed or steps")
    return bench["name"], tasks, dict(combiner), seed, steps


def _task_scores(values: Any, tasks: Sequence[str]) -> dict[str, float] | None:
    """``{task: success}`` for every task, or None when one is missing or not a number."""
    if not isinstance(values, Mapping):
        return None
    out = {}
    for task in tasks:
        value = values.get(task)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        out[task] = float(value)
    return out


def _number(value: Any) -> float:
    """``value`` as a float; nan for anything that is not a number (a null or a string in a log)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory. Its ``method`` is the bare combiner name until :func:`load_runs` labels it.

    Raises:
        UnusableRun: the config is unreadable or lacks a required key, or the run has no evaluation yet.
    """
    run_dir = Path(run_dir).resolve()
    cfg = _read_config(run_dir / CONFIG_FILE)
    benchmark, cfg_tasks, combiner, seed, steps = _config_fields(cfg)
    try:
        records = parse_metrics_lines((run_dir / METRICS_FILE).read_text(errors="replace").splitlines())
    except OSError as exc:
        raise UnusableRun(f"cannot read {METRICS_FILE}: {exc}") from exc
    final = _read_final_eval(run_dir / FINAL_EVAL_FILE)
    evals = [r for r in records if EVAL_KEY in r or any(k.startswith(EVAL_TASK_PREFIX) for k in r)]

    # Task names: the config's list; for a whole benchmark (tasks: null), those the run evaluated.
    tasks = cfg_tasks
    if (
        tasks is None
        and final is not None
        and isinstance(final.get("per_task"), Mapping)
        and final["per_task"]
    ):
        tasks = [str(t) for t in final["per_task"]]
    if tasks is None and evals:
        tasks = [k[len(EVAL_TASK_PREFIX) :] for k in evals[0] if k.startswith(EVAL_TASK_PREFIX)]
    if not tasks:
        raise UnusableRun("no evaluation yet")

    curve_per_task = {
        t: np.array([_number(r.get(EVAL_TASK_PREFIX + t)) for r in evals], dtype=np.float64) for t in tasks
    }
    curve_success = np.array(
        [
            _number(r[EVAL_KEY]) if EVAL_KEY in r else float(np.mean([curve_per_task[t][i] for t in tasks]))
            for i, r in enumerate(evals)
        ],
        dtype=np.float64,
    )
    # The trainer logs env_steps = iterations × tasks; older logs without it are rebuilt that way.
    curve_steps = np.array(
        [_number(r.get("env_steps", r["step"] * len(tasks))) for r in evals], dtype=np.float64
    )

    final_step = final.get("step", -1) if final is not None else -1
    if not isinstance(final_step, int):
        final_step = -1
    final_scores = _task_scores(final.get("per_task"), tasks) if final is not None else None
    last_eval_step = evals[-1]["step"] if evals else -1
    last_eval_scores = _task_scores({t: curve_per_task[t][-1] for t in tasks}, tasks) if evals else None
    # final_eval.json wins unless metrics.jsonl holds a later evaluation (a stale file from a run that
    # was later resumed with more steps).
    if final_scores is not None and final_step >= last_eval_step:
        scores, source, scored_at = final_scores, FINAL_EVAL_FILE, final_step
    elif last_eval_scores is not None:
        scores, source, scored_at = last_eval_scores, METRICS_FILE, last_eval_step
    elif not evals and final is None:
        raise UnusableRun("no evaluation yet")
    else:
        raise UnusableRun("no evaluation of every task yet")

    return RunRecord(
        run_dir=run_dir,
        benchmark=benchmark,
        tasks=list(tasks),
        method=str(combiner["name"]),
        combiner=combiner,
        seed=seed,
        steps=steps,
        curve_steps=curve_steps,
        curve_success=curve_success,
        curve_per_task=curve_per_task,
        final_per_task=scores,
        complete=final is not None and final_step >= steps,
        last_step=max([final_step, *(r["step"] for r in records)]),
        final_step=scored_at,
        final_source=source,
        agent=dict(cfg["agent"]) if isinstance(cfg.get("agent"), Mapping) else {},
    )


def load_runs(
    paths: Iterable[str | Path], *, skipped: list[tuple[Path, str]] | None = None
) -> list[RunRecord]:
    """Every run under ``paths`` (run or sweep directories), each once, labelled with its method.

    Runs that cannot be scored are left out and, when ``skipped`` is given, appended to it with the
    reason. Runs come in the order of ``paths``, each path's runs sorted.

    Raises:
        ReportError: a path does not exist, or holds no run directory, or no run can be scored.
    """
    seen: set[Path] = set()
    runs: list[RunRecord] = []
    paths = list(paths)
    for path in paths:
        found = find_run_dirs(path)
        if not found:
            raise ReportError(
                f"no training runs found under {path} (a run directory holds {CONFIG_FILE} and {METRICS_FILE})"
            )
        for run_dir in found:
            resolved = run_dir.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                runs.append(load_run(resolved))
            except UnusableRun as exc:
                if skipped is not None:
                    skipped.append((resolved, str(exc)))
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise ReportError(f"none of the training runs under {where} has an evaluation yet")
    # Labels are made within each benchmark and task set: runs of different groups are never pooled,
    # so their differences (network sizes, lengths) must not lengthen each other's labels.
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for index, run in enumerate(runs):
        groups.setdefault(_group_key(run), []).append(index)
    labelled = list(runs)
    for members in groups.values():
        labels = label_methods([(runs[i].combiner, runs[i].agent, runs[i].steps) for i in members])
        for i, (label, params) in zip(members, labels, strict=True):
            labelled[i] = replace(runs[i], method=label, method_params=params)
    return labelled


# ----------------------------------------------------------------------------------------------------
# Method labels
# ----------------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A hyperparameter value, compactly: ``2.0`` → ``"2"``, ``0.5`` → ``"0.5"``, ``1e-10`` → ``"1e-10"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _hashable(value: Any) -> Any:
    """A value that can be compared and hashed (lists become tuples, mappings sorted item tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _hashable(value)
    return out


# Stands for a key that a run's config lacks (an older config), so it differs from any real value.
_ABSENT = "(unset)"


def label_methods(
    configs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], int]],
) -> list[tuple[str, dict[str, Any]]]:
    """Method labels for runs given as ``(combiner, agent, steps)``, and the hyperparameters in each label.

    A label is the combiner name plus every setting that differs between runs of that combiner in
    ``configs``: its hyperparameters first (``alpha=2``), then agent hyperparameters (``agent.tau=0.01``)
    and the training length (``steps=80000``), so runs pooled as seeds of one method never differ in
    more than their seed. A combiner whose runs all agree is labelled by its name alone.
    """
    # Per run: the combiner name, then its settings in label order (combiner, agent, training length).
    settings: list[tuple[str, list[dict[str, Any]]]] = [
        (
            str(combiner.get("name", "unknown")),
            [
                {k: _hashable(v) for k, v in combiner.items() if k != "name"},
                _flatten(agent, "agent."),
                {"steps": steps},
            ],
        )
        for combiner, agent, steps in configs
    ]
    labels = []
    for name, parts in settings:
        same = [other for other_name, other in settings if other_name == name]
        params: dict[str, Any] = {}
        for i, part in enumerate(parts):
            for key in sorted(set().union(*(other[i].keys() for other in same))):
                # A key that an older config lacks is compared among the runs that have it.
                if len({other[i][key] for other in same if key in other[i]}) > 1:
                    params[key] = part.get(key, _ABSENT)
        text = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
        labels.append((f"{name} ({text})" if text else name, params))
    return labels


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


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Per-method summaries
# ----------------------------------------------------------------------------------------------------


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


def _group_key(run: RunRecord) -> tuple[str, tuple[str, ...]]:
    """Runs are compared only within one benchmark and task set."""
    return run.benchmark, tuple(sorted(run.tasks))


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


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------


def method_colours(labels: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct colour per method, in the given order (so each method keeps its colour in every plot)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: tuple(cmap(i % cmap.N)) for i, label in enumerate(labels)}  # type: ignore[misc]


def _new_figure(width: float, height: float) -> Any:
    # A bare Figure (not pyplot) renders with Agg on savefig, needs no global backend switch, and is
    # freed with its last reference, so no figure can leak into a user's interactive session.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _common_curve(runs: Sequence[RunRecord]) -> tuple[FloatArray, FloatArray]:
    """Environment steps evaluated by every run, and each run's mean success there (runs × steps)."""
    common = runs[0].curve_steps
    for run in runs[1:]:
        common = np.intersect1d(common, run.curve_steps)
    common = np.unique(common)
    values = np.array(
        [[run.curve_success[np.flatnonzero(run.curve_steps == s)[-1]] for s in common] for run in runs],
        dtype=np.float64,
    ).reshape(len(runs), len(common))
    return common, values


def _legend_label(label: str, width: int = 40) -> str:
    """A method label wrapped to lines of ``width`` characters, so a long one cannot squeeze the axes."""
    return "\n".join(textwrap.wrap(label, width)) or label


def plot_curves(methods: Sequence[MethodSummary], colours: Mapping[str, Any], path: Path) -> None:
    """Mean evaluation success against environment steps, mean over seeds with a ±SE band."""
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    for method in methods:
        steps, values = _common_curve(method.runs)
        if steps.size == 0:
            continue
        mean = values.mean(axis=0) * 100
        colour = colours[method.label]
        ax.plot(
            steps,
            mean,
            color=colour,
            marker="o",
            markersize=3,
            label=_legend_label(f"{method.label} (n={len(method.runs)})"),
        )
        if len(method.runs) > 1:
            se = values.std(axis=0, ddof=1) / math.sqrt(len(method.runs)) * 100
            ax.fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation success (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=130)


def plot_per_task(methods: Sequence[MethodSummary], colours: Mapping[str, Any], path: Path) -> None:
    """Grouped bars of final per-task success per method, with ±SE error bars across seeds."""
    tasks = methods[0].tasks
    n_methods = len(methods)
    width = min(30.0, max(7.0, 1.0 + len(tasks) * (0.2 * n_methods + 0.3)))
    fig = _new_figure(width, 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(tasks), dtype=np.float64)
    bar = 0.8 / n_methods
    for i, method in enumerate(methods):
        se = np.nan_to_num(method.task_se) * 100  # one seed: no error bar
        ax.bar(
            x + (i - (n_methods - 1) / 2) * bar,
            method.task_mean * 100,
            bar,
            yerr=se if np.any(se > 0) else None,
            capsize=2,
            color=colours[method.label],
            label=_legend_label(method.label),
        )
    ax.set_xticks(x, tasks, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("final success (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    # Outside the axes: bars reach 100 %, where a legend inside would hide them.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=130)


def plot_alpha(group: Group, colours: Mapping[str, Any], path: Path) -> None:
    """Mean and worst-task success against FairGrad's alpha, other methods as horizontal references."""
    series = alpha_series(group)
    in_series = {m.label for s in series for _, m in s}
    fig = _new_figure(10.0, 4.0)
    panels = fig.subplots(1, 2, sharey=True)
    alphas = [a for s in series for a, _ in s]
    log_x = min(alphas) > 0 and max(alphas) / min(alphas) >= 10
    for ax, (title, value, error) in zip(
        panels,
        [
            ("mean success", lambda m: m.mean, lambda m: m.se),
            ("worst-task success", lambda m: m.worst, lambda m: m.worst_se),
        ],
        strict=True,
    ):
        for s in series:
            xs = np.array([a for a, _ in s])
            ys = np.array([value(m) for _, m in s]) * 100
            es = np.nan_to_num(np.array([error(m) for _, m in s])) * 100
            name = s[0][1].label.split(" (")[0]
            rest = {k: v for k, v in s[0][1].runs[0].method_params.items() if k != "alpha"}
            if rest:
                name += " (" + ", ".join(f"{k}={format_value(v)}" for k, v in rest.items()) + ")"
            ax.plot(xs, ys, color="0.3", linewidth=1.2, label=name, zorder=1)
            ax.fill_between(xs, ys - es, ys + es, color="0.5", alpha=0.15, linewidth=0)
            for x, y, (_, method) in zip(xs, ys, s, strict=True):
                ax.plot([x], [y], "o", color=colours[method.label], zorder=2)
        for method in group.methods:
            if method.label not in in_series:
                ax.axhline(
                    value(method) * 100,
                    color=colours[method.label],
                    linestyle="--",
                    label=_legend_label(method.label),
                )
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(sorted(set(alphas)), [format_value(a) for a in sorted(set(alphas))])
        ax.minorticks_off()
        ax.set_xlabel("FairGrad alpha")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("success (%)")
    panels[0].legend(fontsize="small")
    fig.savefig(path, dpi=130)


# ----------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------


def format_percent(x: float) -> str:
    """A success rate in [0, 1] as a percentage with one decimal; nan as ``–``."""
    return MISSING if not math.isfinite(x) else f"{100 * x:.1f}"


def format_mean_se(mean: float, se: float) -> str:
    """``"72.0 ± 3.1"`` in percent; the SE of a single seed (nan) shows as ``–``."""
    return f"{format_percent(mean)} ± {format_percent(se)}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """A Markdown table; ``align`` holds ``l`` or ``r`` per column."""
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _seeds(runs: Sequence[RunRecord]) -> str:
    seeds = ", ".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))
    return f"seed{'s' if len(runs) > 1 else ''} {seeds}"


def render_group(group: Group, images: Mapping[str, str], *, confidence: float, heading: bool) -> list[str]:
    """The Markdown lines of one group: header, summary, per-task table, plots and the run list."""
    lines: list[str] = []
    if heading:
        lines += [f"## {group.benchmark}, {len(group.tasks)} tasks", ""]
    lines += [
        f"**Benchmark:** {group.benchmark}. **Tasks ({len(group.tasks)}):** "
        + ", ".join(f"`{t}`" for t in group.tasks)
        + ".",
        "",
        "**Runs per method:** "
        + "; ".join(f"{m.label}: {len(m.runs)} ({_seeds(m.runs)})" for m in group.methods)
        + ".",
        "",
    ]
    for m in group.methods:
        seeds = [r.seed for r in m.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            lines += [
                f"Note: {m.label} has several runs with seed {', '.join(map(str, repeated))}; "
                "each counts as a separate run.",
                "",
            ]
    incomplete = [r for r in group.runs if not r.complete]
    if incomplete:
        lines += [
            f"**Incomplete runs ({len(incomplete)}).** These have no `{FINAL_EVAL_FILE}` covering all "
            "configured iterations; they are included with their latest evaluation (periodic "
            "evaluations typically use fewer episodes than the final one, so these scores are noisier):",
            "",
        ]
        lines += [
            f"- `{_display_path(r.run_dir)}`: {r.method}, seed {r.seed}, scored at iteration "
            f"{r.final_step} of {r.steps} (from `{r.final_source}`)"
            for r in incomplete
        ]
        lines.append("")

    pct = f"{round(confidence * 100, 2):g}%"
    lines += ["### Summary", ""]
    lines += _table(
        ["Method", "Runs", "Success (%) ± SE", f"IQM (%) [{pct} CI]", "Worst task (%)", "Jain's index"],
        [
            [
                m.label,
                str(len(m.runs)),
                format_mean_se(m.mean, m.se),
                f"{format_percent(m.iqm)} "
                + (
                    f"[{format_percent(m.ci[0])}, {format_percent(m.ci[1])}]"
                    if len(m.runs) > 1
                    else f"[{MISSING}]"
                ),
                f"{format_percent(m.worst)} ({m.worst_task})",
                MISSING if math.isnan(m.jain) else f"{m.jain:.3f}",
            ]
            for m in group.methods
        ],
        "lrrrrr",
    )
    lines += ["", "### Per-task success (%)", "", "Final success on each task, averaged over seeds.", ""]
    lines += _table(
        ["Task", *(m.label for m in group.methods)],
        [
            [t, *(format_percent(float(m.task_mean[j])) for m in group.methods)]
            for j, t in enumerate(group.tasks)
        ],
        "l" + "r" * len(group.methods),
    )
    lines += ["", "### Plots", ""]
    captions = {
        "curves": "Evaluation success against environment steps (mean over seeds, shaded ±SE)",
        "per_task": "Final per-task success (mean over seeds, error bars ±SE)",
        "alpha": "FairGrad's alpha: mean and worst-task success (±SE); other methods dashed",
    }
    for key, caption in captions.items():
        if key in images:
            lines += [f"![{caption}]({images[key]})", "", f"*{caption}.*", ""]

    lines += ["### Runs", ""]
    lines += _table(
        ["Run", "Method", "Seed", "Success (%)", "Scored at iteration", "Source"],
        [
            [
                f"`{_display_path(r.run_dir)}`",
                r.method,
                str(r.seed),
                format_percent(r.mean_success),
                f"{r.final_step} of {r.steps}",
                f"`{r.final_source}`",
            ]
            for r in sorted(group.runs, key=lambda r: (r.method, r.seed, str(r.run_dir)))
        ],
        "llrrrl",
    )
    lines.append("")
    return lines


def _notes(reps: int, confidence: float, seed: int) -> list[str]:
    pct = f"{round(confidence * 100, 2):g}%"
    return [
        "## How to read the tables",
        "",
        "- **Success**: a run's score is its final success rate averaged over tasks; the table shows the "
        f"mean over runs (seeds) ± the standard error `std(ddof=1) / sqrt(n)`, `{MISSING}` for a single run.",
        "- **IQM**: interquartile mean of all run × task scores (the mean of the middle 50%), after "
        "Agarwal et al., *Deep Reinforcement Learning at the Edge of the Statistical Precipice* (NeurIPS "
        f"2021). The {pct} interval is the percentile interval of a stratified bootstrap (runs resampled "
        f"with replacement independently for each task; {reps} resamples, seed {seed}). With a single run "
        f"there is nothing to resample and the interval shows `{MISSING}`.",
        "- **Worst task**: the lowest per-task success, the per-task success being averaged over runs.",
        "- **Jain's index**: `(Σx)² / (n Σx²)` of the per-task success averaged over runs: 1 when all tasks "
        f"succeed equally, 1/n when a single task carries all the success; `{MISSING}` when every task "
        "has zero success (undefined).",
        "",
    ]


def write_report(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    sources: Sequence[str | Path] = (),
    skipped: Sequence[tuple[Path, str]] = (),
) -> Path:
    """Write ``report.md`` and its PNG plots into ``out_dir`` (created if needed); return the report's path.

    Everything is computed before ``out_dir`` is created, so a failure leaves no half-written report.
    """
    groups = group_runs(runs, reps=reps, confidence=confidence, seed=seed)
    labels = method_order(runs)
    colours = method_colours(labels)
    out = Path(out_dir)

    lines = ["# Training report", ""]
    where = ", ".join(f"`{s}`" for s in sources)
    lines += [
        f"{len(runs)} training run{'s' if len(runs) != 1 else ''}"
        + (f" found under {where}" if where else "")
        + f", in {len(groups)} group{'s' if len(groups) != 1 else ''} of benchmark and task set. "
        "Success is the fraction of evaluation episodes that succeed, in percent.",
        "",
    ]
    if skipped:
        lines += [f"Left out ({len(skipped)}), as they cannot be scored yet:", ""]
        lines += [f"- `{_display_path(p)}`: {reason}" for p, reason in skipped]
        lines.append("")

    out.mkdir(parents=True, exist_ok=True)
    for group in groups:
        prefix = f"{group.slug}_" if group.slug else ""
        images = {"curves": f"{prefix}curves.png", "per_task": f"{prefix}per_task.png"}
        plot_curves(group.methods, colours, out / images["curves"])
        plot_per_task(group.methods, colours, out / images["per_task"])
        if alpha_series(group):
            images["alpha"] = f"{prefix}alpha.png"
            plot_alpha(group, colours, out / images["alpha"])
        lines += render_group(group, images, confidence=confidence, heading=len(groups) > 1)
    lines += _notes(reps, confidence, seed)
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage mistake as one ``error:`` line instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtrl-fair report",
        description="Summarise finished training runs as a Markdown report with plots.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="run directories, or sweep directories holding runs at any depth"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for report.md and its plots")
    parser.add_argument(
        "--bootstrap-reps",
        type=int,
        default=2000,
        help="bootstrap resamples for the IQM intervals (default 2000)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    return parser


def main(argv: list[str]) -> int:
    """``mtrl-fair report``: write the report; 0 on success, 2 with one ``error:`` line on bad input."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        if args.bootstrap_reps < 1:
            raise ReportError(f"--bootstrap-reps must be at least 1, got {args.bootstrap_reps}")
        if not 0.0 < args.confidence < 1.0:
            raise ReportError(f"--confidence must lie strictly between 0 and 1, got {args.confidence}")
        if args.out.exists() and not args.out.is_dir():
            raise ReportError(f"--out {args.out} exists and is not a directory")
        skipped: list[tuple[Path, str]] = []
        runs = load_runs(args.paths, skipped=skipped)
        path = write_report(
            runs,
            args.out,
            reps=args.bootstrap_reps,
            confidence=args.confidence,
            seed=args.seed,
            sources=args.paths,
            skipped=skipped,
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report to {args.out}: {exc}", file=sys.stderr)
        return 2
    for run_dir, reason in skipped:
        print(f"note: left out {run_dir}: {reason}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
