"""The ``mtrl-fair`` command.

``mtrl-fair train [overrides…]`` composes ``configs/train.yaml`` with Hydra (so ``-m`` sweeps and
Hydra launchers work) and runs :func:`mtrl_fair.training.run_training`.

``mtrl-fair eval <run-dir-or-checkpoint> [episodes=N] [seed=S] [device=D] [vector_strategy=sync|async]``
scores a trained agent with Meta-World's protocol and writes the per-task table as JSON and Markdown.
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
  combiners                             list the combiners and their hyperparameters

Run `mtrl-fair train --help` for the training config and its groups."""

# Files Hydra writes into a run directory before the run starts; removed again when the config is
# rejected, so that bad input leaves no half-made run behind.
_HYDRA_FILES = (".hydra", "train.log", "cli.log")


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    if command == "eval":
        return _eval(rest)
    if command == "combiners":
        return _list_combiners()
    _error(f"unknown command {command!r}; allowed: train, eval, combiners")
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

        from mtrl_fair.agents import NonFiniteUpdateError
        from mtrl_fair.training import run_training

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        fresh = not (run_dir / "config.yaml").exists()
        print(f"run directory: {run_dir}", flush=True)
        try:
            train_cfg: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            summary = run_training(train_cfg, run_dir)
        except ConfigError as error:
            _error(str(error))
            if fresh:
                _remove_hydra_files(run_dir)
            exit_code = 2
            return
        except NonFiniteUpdateError as error:
            _error(f"{error} ({run_dir / 'checkpoints'})")
            exit_code = 3
            return
        if summary:
            print(
                f"mean success rate: {summary['mean_success']:.3f}  (per task: {run_dir / 'final_eval.md'})"
            )

    sys.argv = ["mtrl-fair train", *overrides]
    train_app()
    return exit_code


def _precheck(overrides: list[str]) -> str | None:
    """Compose the config once before Hydra runs, to turn a bad override into one clear line.

    Hydra's own reports span several lines and list its search path. Sweeps (``-m``) are left to
    Hydra, since ``a=1,2`` is not a value on its own.
    """
    if any(arg in ("-m", "--multirun") or arg.startswith("--") for arg in overrides):
        return None
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mtrl_fair.config import validate_train_config
    from mtrl_fair.training import check_new_run_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtrl_fair.configs", version_base="1.3"):
            cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])
        # Ranges and names too, so that Hydra does not even create the run directory, nor write its
        # files into an existing run that is not being resumed.
        validate_train_config(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
        run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
        if run_dir is not None and not cfg.resume:
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

_EVAL_KEYS = {"episodes": int, "seed": int, "device": str, "vector_strategy": str}


def _parse_eval_args(args: list[str]) -> tuple[Path, dict[str, Any]]:
    if not args:
        raise ValueError(
            "eval needs a run directory or a checkpoint file: mtrl-fair eval <path> [episodes=N]"
        )
    path, options = Path(args[0]), {"episodes": 50, "seed": 0, "device": "auto", "vector_strategy": "sync"}
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in _EVAL_KEYS:
            raise ValueError(
                f"unknown eval option {arg!r}; allowed: {', '.join(k + '=' for k in _EVAL_KEYS)}"
            )
        try:
            options[key] = _EVAL_KEYS[key](value)
        except ValueError:
            raise ValueError(f"eval option {key} needs an integer, got {value!r}") from None
    return path, options


def _eval(args: list[str]) -> int:
    from mtrl_fair.agents import MTSAC, CheckpointError, load_checkpoint
    from mtrl_fair.training import latest_checkpoint

    try:
        path, options = _parse_eval_args(args)
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise ValueError(f"no loadable checkpoint in {path / 'checkpoints'}")
            checkpoint, state = found
            out_prefix = path / "eval"
        elif path.is_file():
            checkpoint, state = path, load_checkpoint(path)
            out_prefix = path.with_suffix(".eval")
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

    from mtrl_fair.envs import evaluate

    console = Console()
    console.print(
        f"evaluating {checkpoint} (iteration {agent.iteration}) on {benchmark}, {options['episodes']} episodes per task"
    )
    try:
        result = evaluate(
            agent,
            benchmark=benchmark,
            episodes=options["episodes"],
            seed=options["seed"],
            tasks=agent.task_names,
            vector_strategy=options["vector_strategy"],
            progress=True,
        )
    except ValueError as error:
        _error(str(error))
        return 2
    table = Table(
        title=f"{benchmark} success rate ({options['episodes']} episodes per task, seed {options['seed']})"
    )
    table.add_column("task")
    table.add_column("success", justify="right")
    table.add_column("mean return", justify="right")
    for name in agent.task_names:
        table.add_row(
            name,
            f"{result.per_task[name]:.2f}",
            f"{sum(result.returns[name]) / len(result.returns[name]):.1f}",
        )
    table.add_row("[bold]mean", f"[bold]{result.mean_success:.3f}", f"{result.mean_return:.1f}")
    console.print(table)
    record = {**result.to_dict(), "checkpoint": str(checkpoint), "step": agent.iteration}
    json_path, md_path = Path(f"{out_prefix}.json"), Path(f"{out_prefix}.md")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(result.to_markdown())
    console.print(f"wrote {json_path} and {md_path}")
    return 0


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
