"""The ``mtrl-fair`` command.

``mtrl-fair train [overrides…]`` composes ``configs/train.yaml`` with Hydra (so ``-m`` sweeps and
Hydra launchers work) and runs :func:`mtrl_fair.training.run_training`
(:mod:`mtrl_fair.train_command`).

``mtrl-fair eval <run-dir-or-checkpoint> [episodes=N] [seed=S] [device=D] [vector_strategy=sync|async]
[video=true video_episodes=N video_size=PX video_camera=NAME]`` scores a trained agent with
Meta-World's protocol, writes the per-task table as JSON and Markdown and the per-task success
as ``eval.png`` (with the run's evaluations along training beside it), and with ``video=true`` one
clip per task in ``<run>/videos/`` (:mod:`mtrl_fair.eval_command`).

``mtrl-fair report <run-or-sweep-dirs...> --out DIR`` turns runs into ``DIR/report.md`` and its plots
(:mod:`mtrl_fair.report`).
"""

from __future__ import annotations

import sys
import warnings

from mtrl_fair.console import (  # noqa: F401 - the exit codes are part of the command's interface
    EXIT_BAD_INPUT,
    EXIT_DISK_FULL,
    EXIT_NON_FINITE,
    EXIT_RUN_DIR_BUSY,
    error,
    one_line_warning,
)

USAGE = """usage: mtrl-fair <command> [arguments]

commands:
  train [key=value ...]                 train multi-task SAC (Hydra overrides, e.g. benchmark=mt10 combiner=fairgrad)
  eval <run-dir-or-checkpoint> [key=value ...]
                                        per-task success rates (episodes=50 seed=0 device=auto vector_strategy=sync)
                                        and eval.png; video=true: one clip per task in <run>/videos/
                                        (video_episodes=1 video_size=240 video_camera=corner3)
  report <run-or-sweep-dirs ...> --out DIR
                                        Markdown report with plots: success with confidence intervals,
                                        per-task success, fairness across tasks
  combiners                             list the combiners and their hyperparameters

Run `mtrl-fair train --help` for the training config and its groups."""

def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            from mtrl_fair.train_command import train_command

            return train_command(rest)
        if command == "eval":
            from mtrl_fair.eval_command import eval_command

            return eval_command(rest)
    except ImportError as missing:
        if not hasattr(missing, "debian_package"):
            raise
        # An OpenGL library MuJoCo needs is missing (mtrl_fair.envs.rendering.RenderingError, which
        # cannot be named here: importing it is what failed); its message says what to install.
        error(str(missing))
        return 2
    if command == "report":
        from mtrl_fair.report import main as report_main

        return report_main(rest)
    if command == "combiners":
        return _list_combiners()
    error(f"unknown command {command!r}; allowed: train, eval, report, combiners")
    return 2


# ----------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------
# combiners
# ----------------------------------------------------------------------------------------------------


def _list_combiners() -> int:
    from mtrl_fair.combiners import available, hparam_names

    for name in available():
        params = ", ".join(hparam_names(name)) or "-"
        print(f"{name:18s} {params}")
    print("torchjd:<Name>     any aggregator of torchjd.aggregation")
    return 0


def entry_point() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
