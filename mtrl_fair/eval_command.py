"""``mtrl-fair eval <run-or-checkpoint> [key=value ...]``: a trained agent scored with Meta-World's
protocol; the per-task table as JSON and Markdown, the per-task success as ``eval.png`` (with the
run's evaluations along training beside it), and with ``video=true`` one clip per task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtrl_fair.console import error as print_error

__all__ = ["eval_command"]


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


def eval_command(args: list[str]) -> int:
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
        print_error(str(error))
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
        print_error(str(error))
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


