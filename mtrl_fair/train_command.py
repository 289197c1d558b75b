"""``mtrl-fair train``: Hydra composes ``configs/train.yaml`` (so ``-m`` sweeps and Hydra launchers
work), every combination is checked before the first job starts, and each job runs
:func:`mtrl_fair.training.run_training` in its run directory.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

from mtrl_fair.console import EXIT_BAD_INPUT, EXIT_DISK_FULL, EXIT_NON_FINITE, EXIT_RUN_DIR_BUSY
from mtrl_fair.console import error as print_error
from mtrl_fair.packing import PackingError, pack_overrides

__all__ = ["train_command"]

# Files Hydra writes into a run directory before the run starts; removed again when the config is
# rejected, so that bad input leaves no half-made run behind.
_HYDRA_FILES = (".hydra", "train.log", "cli.log")


def train_command(overrides: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from mtrl_fair.config import ConfigError, TrainConfig, register_schemas
    from mtrl_fair.run_lock import RunDirBusy

    register_schemas()
    try:
        problem = _precheck(overrides)
    except RunDirBusy as busy:
        print_error(_busy_line(busy))
        return EXIT_RUN_DIR_BUSY
    if problem is not None:
        print_error(problem)
        return EXIT_BAD_INPUT
    exit_code = 0

    @hydra.main(version_base="1.3", config_path="pkg://mtrl_fair.configs", config_name="train")
    def train_app(cfg: DictConfig) -> None:
        nonlocal exit_code
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from mtrl_fair.agents import NonFiniteUpdateError
        from mtrl_fair.config import validate_train_config
        from mtrl_fair.disk_full import DiskFullError
        from mtrl_fair.packed_training import run_packed_training
        from mtrl_fair.run_dir import holds_run
        from mtrl_fair.run_lock import LockUnavailable, RunDirBusy, hold_run_dir
        from mtrl_fair.training import run_training

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        fresh = not (run_dir / "config.yaml").exists()
        try:
            train_cfg: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            validate_train_config(train_cfg)
            plans = _pack_plans(train_cfg, run_dir, in_sweep) if train_cfg.pack_runs else []
        except ConfigError as error:
            print_error(str(error))
            if fresh:
                _remove_hydra_files(run_dir)
            if in_sweep:  # marks this job failed; Hydra reports it when the sweep ends
                raise
            exit_code = EXIT_BAD_INPUT
            return
        for plan in plans:
            print(f"run directory: {plan.run_dir}", flush=True)
        if not plans:
            print(f"run directory: {run_dir}", flush=True)
        try:
            if plans:
                summaries = run_packed_training(
                    train_cfg,
                    plans,
                    in_sweep=in_sweep,
                    before_writing=lambda member_dir: _write_hydra_record(member_dir, cfg),
                )
            else:
                # The lock comes before any write: a second process on a held run writes nothing there.
                with hold_run_dir(run_dir, enabled=train_cfg.lock_run_dir):
                    # A sweep job always continues its own directory: a retried, preempted or
                    # re-launched job resumes from its last checkpoint, and a finished one is skipped.
                    if in_sweep and holds_run(run_dir):
                        train_cfg.resume = True
                    summaries = [
                        run_training(train_cfg, run_dir, before_writing=lambda: _write_hydra_record(run_dir, cfg))
                    ]
        except RunDirBusy as busy:
            if in_sweep:  # the job is running elsewhere: not a failure of this sweep
                print(f"skipped: {busy}", flush=True)
                return
            print_error(_busy_line(busy))
            exit_code = EXIT_RUN_DIR_BUSY
            return
        except LockUnavailable as error:
            print_error(str(error))
            if fresh:
                _remove_hydra_files(run_dir)
            if in_sweep:
                raise
            exit_code = EXIT_RUN_DIR_BUSY
            return
        except ConfigError as error:  # found under the lock: the directory holds another run
            print_error(str(error))
            if in_sweep:
                raise
            exit_code = EXIT_BAD_INPUT
            return
        except NonFiniteUpdateError as error:
            print_error(f"{error} ({run_dir / 'checkpoints'})")
            if in_sweep:
                raise
            exit_code = EXIT_NON_FINITE
            return
        except DiskFullError as error:
            print_error(f"{error} (exit code {EXIT_DISK_FULL})")
            if in_sweep:
                raise
            exit_code = EXIT_DISK_FULL
            return
        for summary in summaries:
            if summary:
                final_md = Path(summary.get("run_dir", run_dir)) / "final_eval.md"
                print(f"mean success rate: {summary['mean_success']:.3f}  (per task: {final_md})")

    multirun = any(arg in ("-m", "--multirun") for arg in overrides)
    if _packs(overrides):
        if not multirun:
            print_error("pack=true packs the runs of a sweep: add -m, e.g. mtrl-fair train -m seed=0,1,2,3 pack=true")
            return EXIT_BAD_INPUT
        try:
            overrides = pack_overrides(overrides)
        except PackingError as error:
            print_error(str(error))
            return EXIT_BAD_INPUT
    if multirun:
        overrides = [*overrides, *_sweep_dirname_override(overrides)]
    sys.argv = ["mtrl-fair train", *overrides]
    train_app()
    return exit_code


def _packs(overrides: list[str]) -> bool:
    """Whether the command asks for packing (``pack=true``)."""
    return any(o.replace(" ", "").lower() in ("pack=true", "pack=yes", "pack=1") for o in overrides)


def _pack_plans(cfg: Any, output_dir: Path, in_sweep: bool) -> list[Any]:
    """The runs of this job's pack, in the directories an unpacked sweep gives them (in a sweep: its
    directory; alone: ``hydra.run.dir``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mtrl_fair.packed_training import plan_runs

    hydra_cfg = HydraConfig.get()
    naming = hydra_cfg.job.config.override_dirname
    if not in_sweep:
        return plan_runs(cfg, output_dir, item_sep=naming.item_sep, kv_sep=naming.kv_sep)
    excluded = set(naming.exclude_keys)
    task = list(hydra_cfg.overrides.task)
    parsed = OverridesParser.create().parse_overrides(task)
    job_lines = [line for line, o in zip(task, parsed, strict=True) if o.key_or_group not in excluded]
    return plan_runs(cfg, Path(hydra_cfg.sweep.dir), job_lines, item_sep=naming.item_sep, kv_sep=naming.kv_sep)


def _precheck(overrides: list[str]) -> str | None:
    """Compose the config before Hydra runs, to turn a bad override into one clear line.

    Hydra's own reports span several lines and list its search path. For a sweep (``-m``) every
    combination is composed and checked, so that a typo in the fifth job does not surface hours
    into the sweep, nor after a cluster has started.

    Raises:
        RunDirBusy: the run directory is held by a live process (checked first, so that the second
            process is told who holds it rather than that the directory holds a run).
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
    from mtrl_fair.run_lock import check_not_held

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
        run_dir = next(
            (o.split("=", 1)[1].strip("'\"") for o in overrides if o.startswith("hydra.run.dir=")), None
        )
        if not sweep and run_dir is not None:
            if cfg.lock_run_dir:
                check_not_held(run_dir)
            if not cfg.resume:
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
    "torch_threads",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "lock_run_dir",
    "pack",
    "pack_runs",
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


def _busy_line(busy: Exception) -> str:
    return f"{busy}; wait for it to end (or stop it), then run the same command with resume=true"


def _write_hydra_record(run_dir: Path, task_cfg: Any) -> None:
    """Hydra's record of the job in ``.hydra/`` (the config, Hydra's own config, the overrides), as
    Hydra would write it before the job; written here once the run holds its directory and has
    passed its checks."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from mtrl_fair.disk_full import writing
    from mtrl_fair.run_dir import write_text_atomically

    # The whole config of the job with its `hydra` node (typed as the node alone), as Hydra saves it.
    hydra_cfg: DictConfig = HydraConfig.instance().cfg  # type: ignore[assignment]
    assert hydra_cfg is not None
    folder = run_dir / ".hydra"
    with writing("Hydra's record of the job", folder):
        folder.mkdir(exist_ok=True)
        for name, node in (
            ("config.yaml", task_cfg),
            ("hydra.yaml", hydra_cfg),
            ("overrides.yaml", hydra_cfg.hydra.overrides.task),
        ):
            write_text_atomically(folder / name, OmegaConf.to_yaml(node))


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


