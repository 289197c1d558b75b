"""``mtrl-fair report``, the command line front end of the report.

``mtrl-fair report <sweep-or-run-dirs...> --out DIR`` finds every run directory (one holding
``config.yaml`` and ``metrics.jsonl``) under the given paths, groups the runs by benchmark and task
set, labels each run with its method (the combiner plus the hyperparameters that vary between runs
of that combiner) and writes ``DIR/report.md`` with PNG plots beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mtrl_fair.report.markdown import write_report
from mtrl_fair.report.runs import ReportError, load_runs


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
