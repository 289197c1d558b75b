"""The report's figures, drawn with matplotlib (imported only when a figure is drawn)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_fair.report.labels import format_value
from mtrl_fair.report.methods import Group, MethodSummary, alpha_series
from mtrl_fair.report.runs import RunRecord
from mtrl_fair.report.stats import FloatArray


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


def plot_task_success(
    per_task: Mapping[str, float],
    path: Path,
    *,
    title: str = "",
    curves: Mapping[str, tuple[FloatArray, FloatArray]] | None = None,
) -> None:
    """One run's evaluation: a bar of success per task (the mean as a dashed line) and, given
    ``curves`` (``{task: (iterations, success)}``, e.g. from :func:`task_eval_curves`), each task's
    success along training beside it."""
    tasks = list(per_task)
    colours = method_colours(tasks)
    panels = 2 if curves else 1
    fig = _new_figure(max(6.0, 0.45 * len(tasks) + 3.0) + (6.0 if curves else 0.0), 4.5)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    bars = axes[0]
    x = np.arange(len(tasks), dtype=np.float64)
    values = np.array([per_task[task] for task in tasks], dtype=np.float64) * 100
    bars.bar(x, values, 0.7, color=[colours[task] for task in tasks])
    mean = float(values.mean())
    bars.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"mean {mean:.1f}%")
    for xi, value in zip(x, values, strict=True):
        bars.text(xi, value + 1.5, f"{value:.0f}", ha="center", fontsize="x-small")
    bars.set_xticks(x, tasks, rotation=45, ha="right", fontsize="small")
    bars.set_ylabel("success (%)")
    bars.set_ylim(0, 108)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize="small", loc="upper right")
    bars.set_title(title or "success per task", fontsize="medium")
    if curves:
        lines = axes[1]
        for task in tasks:
            if task in curves:
                steps, success = curves[task]
                lines.plot(steps, success * 100, marker="o", markersize=3, color=colours[task], label=task)
        lines.set_xlabel("training iterations")
        lines.set_ylabel("evaluation success (%)")
        lines.set_ylim(-2, 102)
        lines.grid(alpha=0.3)
        lines.set_title("during training", fontsize="medium")
        lines.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=110)
