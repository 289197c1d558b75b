"""Turn finished training runs into a Markdown report with plots.

``mtrl-fair report <sweep-or-run-dirs...> --out DIR`` finds every run directory (one holding
``config.yaml`` and ``metrics.jsonl``) under the given paths, groups the runs by benchmark and task
set, labels each run with its method and writes ``DIR/report.md`` with PNG plots beside it: mean
success with its standard error, the interquartile mean with a stratified-bootstrap confidence
interval (Agarwal et al., NeurIPS 2021), the worst-task success and Jain's fairness index.

One concept per module, each importing only those listed before it:

- :mod:`~mtrl_fair.report.stats`: the statistics, as pure functions of numpy arrays.
- :mod:`~mtrl_fair.report.labels`: method labels from the runs' configs.
- :mod:`~mtrl_fair.report.runs`: loading and scoring runs from their run directories.
- :mod:`~mtrl_fair.report.methods`: runs pooled into methods and groups, with their statistics.
- :mod:`~mtrl_fair.report.plots`: the matplotlib figures.
- :mod:`~mtrl_fair.report.markdown`: ``report.md`` itself.
- :mod:`~mtrl_fair.report.command`: the ``mtrl-fair report`` command line.

The package reads files only: it needs numpy and matplotlib, never torch or the environments.
"""

from __future__ import annotations

from mtrl_fair.report.command import main
from mtrl_fair.report.labels import format_value, label_methods
from mtrl_fair.report.markdown import format_mean_se, format_percent, write_report
from mtrl_fair.report.methods import MethodSummary, summarise_method
from mtrl_fair.report.runs import (
    ReportError,
    RunRecord,
    find_run_dirs,
    load_run,
    load_runs,
    parse_metrics_lines,
)
from mtrl_fair.report.stats import (
    batched_iqm,
    batched_mean,
    iqm,
    jain_index,
    mean_and_se,
    stratified_bootstrap_ci,
)

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
