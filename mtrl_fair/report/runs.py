"""Loading training runs from their run directories.

A run directory holds ``config.yaml`` and ``metrics.jsonl`` (and ``final_eval.json`` once the run
has finished). A run's score on a task is its final success rate there: from ``final_eval.json``
when the run finished, otherwise from the last evaluation logged in ``metrics.jsonl`` (such runs
are flagged). :func:`load_runs` labels each run with its method (see :mod:`mtrl_fair.report.labels`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_fair.report.labels import label_methods
from mtrl_fair.report.stats import FloatArray

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
EVAL_KEY = "charts/eval_success_rate"
EVAL_TASK_PREFIX = EVAL_KEY + "/"


class ReportError(Exception):
    """Bad input to the report: a missing path, no runs, an unusable option."""


class UnusableRun(ReportError):
    """A run directory that cannot be scored (unreadable config, no evaluation yet)."""


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


def task_eval_curves(metrics_path: str | Path, tasks: Sequence[str]) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Each task's evaluation success at every evaluation in ``metrics.jsonl``: ``(iterations, success)``.

    Tasks never evaluated are left out; a missing or unreadable file gives no curve.
    """
    try:
        records = parse_metrics_lines(Path(metrics_path).read_text().splitlines())
    except OSError:
        return {}
    curves = {}
    for task in tasks:
        points = [
            (record["step"], _number(record[EVAL_TASK_PREFIX + task]))
            for record in records
            if EVAL_TASK_PREFIX + task in record
        ]
        if points:
            steps, success = zip(*points, strict=True)
            curves[task] = (np.array(steps, dtype=np.float64), np.array(success, dtype=np.float64))
    return curves


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


def _group_key(run: RunRecord) -> tuple[str, tuple[str, ...]]:
    """Runs are compared only within one benchmark and task set."""
    return run.benchmark, tuple(sorted(run.tasks))
