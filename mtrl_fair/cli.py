"""The ``mtrl-fair`` command.

``mtrl-fair train [overrides…]`` composes ``configs/train.yaml`` with Hydra (so ``-m`` sweeps and
Hydra launchers work) and runs :func:`mtrl_fair.training.run_training`.

``mtrl-fair eval <run-dir-or-checkpoint> [episodes=N] [seed=S] [device=D] [vector_strategy=sync|async]
[video=true video_episodes=N video_size=PX video_camera=NAME]`` scores a trained agent with
Meta-World's protocol, writes the per-task table as JSON and Markdown and the per-task success
as ``eval.png`` (with the run's evaluations along training beside it), and with ``video=true`` one
clip per task in ``<run>/videos/``.

``mtrl-fair report <run-or-sweep-dirs...> --out DIR`` turns runs into ``DIR/report.md`` and its plots
(:mod:`mtrl_fair.report`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

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

# Files Hydra writes into a run directory before the run starts; removed again when the config is
# rejected, so that bad input leaves no half-made run behind.
_HYDRA_FILES = (".hydra", "train.log", "cli.log")


def _error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # Escaped: a message may hold brackets (".[wandb]", "[reach-v3]") that rich would read as markup.
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return _train(rest)
        if command == "eval":
            return _eval(rest)
    except ImportError as error:
        if not hasattr(error, "debian_package"):
            raise
        # An OpenGL library MuJoCo needs is missing (mtrl_fair.envs.rendering.RenderingError, which
        # cannot be named here: importing it is what failed); its message says what to install.
        _error(str(error))
        return 2
    if command == "report":
        from mtrl_fair.report import main as report_main

        return report_main(rest)
    if command == "combiners":
        return _list_combiners()
    _error(f"unknown command {command!r}; allowed: train, eval, report, combiners")
    return 2


# ----------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------


def _train(overrides: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from mtrl_fair.config import ConfigError, TrainConfig, register_schemas

    register_schemas()
    problem = _precheck(overrides)
    if problem is not None:
        _error(problem)
        return 2
    exit_code = 0

    @hydra.main(version_base="1.3", config_path="pkg://mtrl_fair.configs", config_name="train")
    def train_app(cfg: DictConfig) -> None:
        nonlocal exit_code
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from mtrl_fair.agents import NonFiniteUpdateError
        from mtrl_fair.run_dir import holds_run
        from mtrl_fair.training import run_training

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        fresh = not (run_dir / "config.yaml").exists()
        print(f"run directory: {run_dir}", flush=True)
        try:
            train_cfg: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            # A sweep job always continues its own directory: a retried, preempted or re-launched
            # job resumes from its last checkpoint, and a finished one is skipped.
            if in_sweep and holds_run(run_dir):
                train_cfg.resume = True
            summary = run_training(train_cfg, run_dir)
        except ConfigError as error:
            _error(str(error))
            if fresh:
                _remove_hydra_files(run_dir)
            if in_sweep:  # marks this job failed; Hydra reports it when the sweep ends
                raise
            exit_code = 2
            return
        except NonFiniteUpdateError as error:
            _error(f"{error} ({run_dir / 'checkpoints'})")
            if in_sweep:
                raise
            exit_code = 3
            return
        if summary:
            print(
                f"mean success rate: {summary['mean_success']:.3f}  (per task: {run_dir / 'final_eval.md'})"
            )

    if any(arg in ("-m", "--multirun") for arg in overrides):
        overrides = [*overrides, *_sweep_dirname_override(overrides)]
    sys.argv = ["mtrl-fair train", *overrides]
    train_app()
    return exit_code


def _precheck(overrides: list[str]) -> str | None:
    """Compose the config before Hydra runs, to turn a bad override into one clear line.

    Hydra's own reports span several lines and list its search path. For a sweep (``-m``) every
    combination is composed and checked, so that a typo in the fifth job does not surface hours
    into the sweep, nor after a cluster has started.
    """
    flags = [arg for arg in overrides if arg.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):
        return None  # --help, --cfg, --info …: Hydra's own
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mtrl_fair.config import validate_train_config
    from mtrl_fair.run_dir import check_new_run_dir

    sweep = bool(flags)
    task_overrides = _task_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtrl_fair.configs", version_base="1.3"):
            for job_overrides in _sweep_jobs(task_overrides) if sweep else [task_overrides]:
                cfg = compose("train", overrides=job_overrides)
                # Ranges and names too, so that Hydra does not even create the run directory, nor
                # write its files into an existing run that is not being resumed.
                validate_train_config(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
        run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
        if not sweep and run_dir is not None and not cfg.resume:
            check_new_run_dir(run_dir)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        messages = [str(error)]
        cause = error.__cause__
        while cause is not None:
            messages.append(str(cause))
            cause = cause.__cause__
        return _one_line("\n".join(messages))
    finally:
        GlobalHydra.instance().clear()
    return None


def _task_overrides(overrides: list[str]) -> list[str]:
    """The overrides of the run itself: flags and hydra.* / hydra/* (launcher, sweeper) configure Hydra."""
    return [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/"))]


def _sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a sweep, as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


# Keys that never change what is trained: they stay out of a sweep job's directory name.
_NOT_IN_RUN_NAME = (
    "resume",
    "progress",
    "device",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "video_every",
    "video_size",
    "video_camera",
    "logger",
    "wandb_project",
    "wandb_entity",
)


def _sweep_dirname_override(overrides: list[str]) -> list[str]:
    """Name each sweep job's directory by its swept values only (``combiner=fairgrad,seed=1``).

    Hydra names it by all overrides, so every run of ``steps=… agent.warmup_steps=… seed=0,1`` would
    carry the fixed values too. The name depends only on the swept values, so a re-launched sweep
    finds each job's run again (and may extend it, e.g. with more ``steps``). A user's own
    ``hydra.job.config.override_dirname.exclude_keys`` is left as it is.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(o.startswith("hydra.job.config.override_dirname.exclude_keys=") for o in overrides):
        return []
    parsed = OverridesParser.create().parse_overrides(_task_overrides(overrides))
    fixed = [o.key_or_group for o in parsed if not o.is_sweep_override()]
    keys = list(dict.fromkeys([*_NOT_IN_RUN_NAME, *fixed]))
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


def _one_line(message: str) -> str:
    """Hydra's multi-line composition errors, reduced to what is wrong and what is allowed."""
    missing = re.search(r"Could not find '([\w-]+)/([^']*)'", message)
    if missing:
        group, option = missing.groups()
        allowed = re.findall(r"^\t(\S+)$", message, flags=re.MULTILINE)
        return f"unknown {group} {option!r}; allowed: {', '.join(allowed)}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    skip = ("full_key", "object_type", "reference_type", "Config search path", "provider=", "To append")
    keep = [line.rstrip(".") for line in lines if not line.startswith(skip)]
    return "; ".join(dict.fromkeys(keep))


def _remove_hydra_files(run_dir: Path) -> None:
    for name in _HYDRA_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    # Remove the directory (and empty parents Hydra made) only if nothing else is in it.
    for folder in (run_dir, *run_dir.parents):
        try:
            folder.rmdir()
        except OSError:
            break


# ----------------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------------


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)


# Each option: its type, what the type is called in an error, and its default.
_EVAL_KEYS: dict[str, tuple[Any, str, Any]] = {
    "episodes": (int, "an integer", 50),
    "seed": (int, "an integer", 0),
    "device": (str, "a name", "auto"),
    "vector_strategy": (str, "a name", "sync"),
    "video": (_boolean, "true or false", False),
    "video_episodes": (int, "an integer", 1),
    "video_size": (int, "an integer", 240),
    "video_camera": (str, "a name", "corner3"),
}


def _parse_eval_args(args: list[str]) -> tuple[Path, dict[str, Any]]:
    if not args:
        raise ValueError(
            "eval needs a run directory or a checkpoint file: mtrl-fair eval <path> [episodes=N]"
        )
    path, options = Path(args[0]), {key: default for key, (_, _, default) in _EVAL_KEYS.items()}
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in _EVAL_KEYS:
            raise ValueError(
                f"unknown eval option {arg!r}; allowed: {', '.join(k + '=' for k in _EVAL_KEYS)}"
            )
        parse, kind, _ = _EVAL_KEYS[key]
        try:
            options[key] = parse(value)
        except ValueError:
            raise ValueError(f"eval option {key} needs {kind}, got {value!r}") from None
    return path, options


def _eval(args: list[str]) -> int:
    from mtrl_fair.agents import MTSAC, CheckpointError, load_checkpoint
    from mtrl_fair.monitor import VIDEO_DIR, one_torch_thread
    from mtrl_fair.run_dir import latest_checkpoint

    try:
        path, options = _parse_eval_args(args)
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise ValueError(f"no loadable checkpoint in {path / 'checkpoints'}")
            checkpoint, state = found
            out_prefix, run_dir = path / "eval", path
            video_dir = path / VIDEO_DIR
        elif path.is_file():
            checkpoint, state = path, load_checkpoint(path)
            out_prefix, run_dir = path.with_suffix(".eval"), path.parent.parent
            video_dir = path.with_suffix(".videos")
        else:
            raise ValueError(f"no run directory or checkpoint at {path}")
        agent = MTSAC.from_metadata(state["metadata"], device=options["device"])
        agent.load_state_dict(state)
        benchmark = state.get("run", {}).get("benchmark") or _infer_benchmark(agent.task_names)
    except (ValueError, CheckpointError) as error:
        _error(str(error))
        return 2

    from rich.console import Console
    from rich.table import Table

    from mtrl_fair.envs import RenderingError, evaluate

    console = Console()
    console.print(
        f"evaluating {checkpoint} (iteration {agent.iteration}) on {benchmark}, {options['episodes']} episodes per task"
    )
    try:
        with one_torch_thread():
            result = evaluate(
                agent,
                benchmark=benchmark,
                episodes=options["episodes"],
                seed=options["seed"],
                tasks=agent.task_names,
                vector_strategy=options["vector_strategy"],
                progress=True,
                video_dir=video_dir if options["video"] else None,
                video_episodes=options["video_episodes"],
                video_size=options["video_size"],
                video_camera=options["video_camera"],
            )
    except (ValueError, RenderingError) as error:
        _error(str(error))
        return 2
    table = Table(
        title=f"{benchmark} success rate ({options['episodes']} episodes per task, seed {options['seed']})"
    )
    table.add_column("task")
    table.add_column("success", justify="right")
    table.add_column("mean return", justify="right")
    if result.videos:
        table.add_column("video")
    for name in agent.task_names:
        table.add_row(
            name,
            f"{result.per_task[name]:.2f}",
            f"{sum(result.returns[name]) / len(result.returns[name]):.1f}",
            *([result.videos[name].describe()] if result.videos else []),
        )
    table.add_row("[bold]mean", f"[bold]{result.mean_success:.3f}", f"{result.mean_return:.1f}")
    console.print(table)
    record = {**result.to_dict(), "checkpoint": str(checkpoint), "step": agent.iteration}
    json_path, md_path = Path(f"{out_prefix}.json"), Path(f"{out_prefix}.md")
    png_path = Path(f"{out_prefix}.png")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(result.to_markdown(relative_to=md_path.parent))
    title = f"{benchmark}, iteration {agent.iteration}, {result.episodes} episodes per task"
    _plot_eval(result.per_task, run_dir / "metrics.jsonl", png_path, title)
    console.print(f"wrote {json_path}, {md_path} and {png_path}")
    if result.videos:
        console.print(f"videos: {video_dir}/<task>.mp4")
    return 0


def _plot_eval(per_task: dict[str, float], metrics_path: Path, png_path: Path, title: str) -> None:
    """``eval.png``: this evaluation's per-task success, beside the run's evaluations along training."""
    from mtrl_fair.report.plots import plot_task_success
    from mtrl_fair.report.runs import task_eval_curves

    curves = task_eval_curves(metrics_path, list(per_task))
    plot_task_success(per_task, png_path, title=title, curves=curves)


def _infer_benchmark(task_names: list[str]) -> str:
    from mtrl_fair.envs import benchmark_tasks

    return "MT10" if set(task_names) <= set(benchmark_tasks("MT10")) else "MT50"


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
