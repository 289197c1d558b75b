"""A training run of multi-task SAC on Meta-World: build or restore, learn, evaluate at the end.

:func:`run_training` reads top to bottom: validate the config, take the run directory's lock
(:mod:`mtrl_fair.run_lock`), build the env and the agent (or restore them from the last
checkpoint), then let the agent learn while :class:`~mtrl_fair.monitor.RunMonitor` logs,
checkpoints and evaluates every so many iterations, and finally save and evaluate once more.

The run directory (:mod:`mtrl_fair.run_dir`) holds:

* ``.lock``: locked by the process writing the run, which notes its host, pid and start time there;
* ``config.yaml``: the resolved config;
* ``metrics.jsonl``: one JSON object per logged point, each with its ``step`` (iterations);
* ``events.out.tfevents.*``: the same values for TensorBoard, grouped ``charts/``, ``losses/``,
  ``combiner/``;
* ``checkpoints/step_<iteration>.pt`` (+ ``.sha256``): networks, optimisers, combiner states, the
  replay buffer, RNG states and counters, written atomically;
* ``final_eval.json`` / ``final_eval.md``: the per-task success rates at the end of training
  (``mtrl-fair eval`` writes ``eval.json`` / ``eval.md`` beside them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mtrl_fair.agents import MTSAC, MTSACConfig, resolve_device
from mtrl_fair.config import TrainConfig, validate_train_config
from mtrl_fair.disk_full import DiskFullError, writing
from mtrl_fair.envs import EvalResult
from mtrl_fair.monitor import RunMonitor, restore_rng_state
from mtrl_fair.resources import checkpoint_bytes, resource_warnings
from mtrl_fair.run_dir import (
    check_new_run_dir,
    check_same_run,
    latest_checkpoint,
    read_json,
    write_text_atomically,
)
from mtrl_fair.run_lock import hold_run_dir
from mtrl_fair.run_settings import resolve_run_settings

__all__ = ["make_env", "run_training", "write_config", "write_final_eval"]


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    echo: Any = print,
    before_writing: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg`` in ``run_dir``; return the final evaluation.

    The run holds ``run_dir``'s lock (:mod:`mtrl_fair.run_lock`) from before its first write until
    the final evaluation is written, unless ``cfg.lock_run_dir`` is off. ``before_writing`` is called
    once the checks have passed, before the run's first write (the command writes Hydra's record of
    the job there, so that a rejected resume leaves the record of the run as it was).

    Raises:
        ConfigError: for any bad value, before an environment starts or a file is written.
        RunDirBusy: another live process holds ``run_dir``; nothing was written.
        LockUnavailable: ``run_dir``'s filesystem refuses locks (and ``lock_run_dir`` is on).
        DiskFullError: a write failed for lack of space; it names the write and the checkpoint to
            resume from.
    """
    run_dir = Path(run_dir)
    # 1. Validate everything first: a bad value must not leave a half-made run behind.
    task_names = validate_train_config(cfg)
    # The auto values resolved on this machine (the fast path on a GPU), as config.yaml records them.
    cfg, settings = resolve_run_settings(cfg)
    resolved: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[assignment]
    if not cfg.lock_run_dir:
        echo(f"warning: lock_run_dir=false: nothing keeps a second process from writing {run_dir}")
    with hold_run_dir(run_dir, enabled=cfg.lock_run_dir):
        return _run_holding_the_lock(cfg, run_dir, task_names, resolved, settings, echo, before_writing)


def _run_holding_the_lock(
    cfg: TrainConfig,
    run_dir: Path,
    task_names: list[str],
    resolved: dict[str, Any],
    settings: list[str],
    echo: Any,
    before_writing: Callable[[], None] | None,
) -> dict[str, Any]:
    saved = None
    if cfg.resume:
        saved = latest_checkpoint(run_dir)
        if saved is not None:
            check_same_run(saved[1]["run"]["config"], resolved, saved[0])
    else:
        check_new_run_dir(run_dir)
    final_eval = read_json(run_dir / "final_eval.json")
    if saved is not None and final_eval.get("step", -1) >= cfg.steps:
        echo(f"run {run_dir} is already complete ({final_eval['step']} of {cfg.steps} iterations)")
        return final_eval
    resumed_from = (saved[0], int(saved[1]["counters"]["iteration"])) if saved is not None else None
    agent: MTSAC | None = None
    monitor: RunMonitor | None = None
    try:
        # 2. Build the env and the agent, or restore them.
        run_dir.mkdir(parents=True, exist_ok=True)
        if before_writing is not None:
            before_writing()
        for line in settings:
            echo(line)
        torch.set_num_threads(int(cfg.torch_threads))
        for warning in resource_warnings(cfg, len(task_names), resolve_device(cfg.device), run_dir):
            echo(f"warning: {warning}")
        write_config(run_dir, resolved)
        env = make_env(cfg, task_names)
        try:
            agent = _build_agent(cfg, env, task_names)
            if saved is not None:
                agent.load_state_dict(saved[1])
                restore_rng_state(saved[1]["run"]["rng"], env)
                echo(f"resuming from {saved[0]} at iteration {agent.iteration}")
            monitor = RunMonitor(
                cfg,
                run_dir,
                task_names,
                start_iteration=agent.iteration,
                resolved_config=resolved,
                resumed_from=resumed_from,
            )
            monitor.env = env
            # 3. Learn: the monitor logs, checkpoints and evaluates along the way.
            try:
                if agent.iteration >= cfg.steps:
                    # Stopped after the last checkpoint but before the final evaluation was written.
                    monitor.write(agent.iteration, agent.num_timesteps, monitor.finish(agent))
                else:
                    agent.learn((cfg.steps - agent.iteration) * agent.num_tasks, callback=monitor)
            except BaseException:
                monitor.close(failed=True)
                raise
            monitor.close()
        finally:
            env.close()
        # 4. The last iteration saved a checkpoint and evaluated the final agent.
        result = monitor.final_result
        assert result is not None
        summary = write_final_eval(run_dir, result, agent.iteration)
    except DiskFullError as error:
        error.resumable = monitor.last_checkpoint if monitor is not None else resumed_from
        if agent is not None:
            error.checkpoint_bytes = checkpoint_bytes(agent)
        raise
    return summary


def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """``config.yaml``: the run's resolved config, replaced atomically."""
    with writing("the config", run_dir / "config.yaml"):
        write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))


def write_final_eval(run_dir: Path, result: EvalResult, iteration: int) -> dict[str, Any]:
    """``final_eval.json`` and ``final_eval.md``, replaced atomically; the JSON's contents."""
    summary = {**result.to_dict(), "step": iteration, "run_dir": str(run_dir)}
    with writing("the final evaluation", run_dir / "final_eval.json"):
        write_text_atomically(run_dir / "final_eval.md", result.to_markdown())
        write_text_atomically(run_dir / "final_eval.json", json.dumps(summary, indent=2) + "\n")
    return summary


def make_env(cfg: TrainConfig, task_names: list[str], seed: int | None = None) -> Any:
    """The run's training env (``seed`` in place of ``cfg.seed``, for a run of a pack)."""
    from mtrl_fair.envs import make_vector_env

    return make_vector_env(
        cfg.benchmark.name,
        task_names,
        seed=cfg.seed if seed is None else seed,
        vector_strategy=cfg.benchmark.vector_strategy,
        max_episode_steps=cfg.benchmark.max_episode_steps,
    )


def _build_agent(cfg: TrainConfig, env: Any, task_names: list[str]) -> MTSAC:
    combiner = dict(cfg.combiner)
    agent = MTSAC(
        env,
        combiner=str(combiner.pop("name")),
        combiner_kwargs=combiner,
        config=MTSACConfig(**asdict(cfg.agent)) if not isinstance(cfg.agent, MTSACConfig) else cfg.agent,
        device=cfg.device,
        seed=cfg.seed,
        task_names=task_names,
    )
    agent.diagnostics_every = cfg.log_every
    return agent
