"""The Markdown report: ``report.md`` with its tables and notes, and the PNG plots beside it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtrl_fair.report.methods import Group, alpha_series, group_runs, method_order
from mtrl_fair.report.plots import method_colours, plot_alpha, plot_curves, plot_per_task
from mtrl_fair.report.runs import FINAL_EVAL_FILE, RunRecord

REPORT_FILE = "report.md"
# Shown in tables wherever a number is undefined (one seed's standard error, Jain's index of zeros).
MISSING = "–"


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
