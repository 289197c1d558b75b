"""The runs of a pack trained in one process: each a normal run in its own directory.

:func:`run_packed_training` is :func:`~mtrl_fair.training.run_training` for R runs that differ only in
``seed`` (and ``combiner.alpha``). Each run holds its own directory's lock, and gets its own
``config.yaml`` (the config it would have alone), ``metrics.jsonl``, TensorBoard events, checkpoints
in the solo format and final evaluation, written by its own
:class:`~mtrl_fair.monitor.RunMonitor`; ``mtrl-fair eval``, ``mtrl-fair report`` and ``resume=true``
read it as any run. The updates of all runs are one batched update
(:class:`~mtrl_fair.agents.packed.PackedMTSAC`).

A pack resumes from the newest iteration at which every unfinished run has a checkpoint (a kill
between two runs' checkpoints leaves the runs one checkpoint apart; the older one is kept, see
``keep_checkpoints``). A finished run is left as it is, and a run held by a live process is
skipped in a sweep.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mtrl_fair.agents import MTSACConfig, resolve_device
from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint
from mtrl_fair.agents.packed import PackedMTSAC, RunSpec
from mtrl_fair.config import ConfigError, TrainConfig, validate_train_config
from mtrl_fair.disk_full import DiskFullError
from mtrl_fair.monitor import RunMonitor, restore_rng_state
from mtrl_fair.packing import run_dirname, run_overrides
from mtrl_fair.resources import resource_warnings, tensor_bytes
from mtrl_fair.run_dir import check_new_run_dir, check_same_run, find_checkpoints, holds_run, read_json
from mtrl_fair.run_lock import RunDirBusy, hold_run_dir
from mtrl_fair.run_settings import resolve_run_settings
from mtrl_fair.training import make_env, write_config, write_final_eval

__all__ = ["PackedRunPlan", "plan_runs", "run_packed_training"]


@dataclass
class PackedRunPlan:
    """One run of a pack: its overrides, directory, config (as it would be alone) and resolved config."""

    lines: list[str]
    run_dir: Path
    cfg: TrainConfig
    resolved: dict[str, Any]


def plan_runs(cfg: TrainConfig, base_dir: Path, job_lines: Sequence[str] = (), *, item_sep: str = ",", kv_sep: str = "=") -> list[PackedRunPlan]:
    """Each run of ``cfg.pack_runs``: its config and its directory ``base_dir / <name>``, named as an
    unpacked sweep names it (``job_lines``: the job's own overrides in that name).

    Raises:
        ConfigError: for a bad run or a bad value, before anything is written.
    """
    plans = []
    for run in cfg.pack_runs:
        try:
            lines = run_overrides(run)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        alone = copy.deepcopy(cfg)
        alone.pack, alone.pack_runs = False, []
        merged = OmegaConf.merge(OmegaConf.structured(alone), OmegaConf.from_dotlist(lines))
        run_cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
        validate_train_config(run_cfg)
        run_cfg, _ = resolve_run_settings(run_cfg)
        resolved: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(run_cfg), resolve=True)  # type: ignore[assignment]
        name = run_dirname(job_lines, lines, item_sep=item_sep, kv_sep=kv_sep)
        plans.append(PackedRunPlan(lines, base_dir / name, run_cfg, resolved))
    return plans


def run_packed_training(
    cfg: TrainConfig,
    plans: list[PackedRunPlan],
    *,
    in_sweep: bool = False,
    echo: Any = print,
    before_writing: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume) the runs of ``plans`` as one pack; return their final evaluations.

    ``in_sweep``: a run held by a live process is skipped with a line, and every run resumes its
    directory (as any sweep job does); otherwise a held run raises :class:`RunDirBusy`.
    ``before_writing(run_dir)`` is called before a run's first write.

    Raises:
        ConfigError, RunDirBusy, LockUnavailable, DiskFullError: as :func:`run_training` does.
    """
    task_names = validate_train_config(cfg)
    cfg, settings = resolve_run_settings(cfg)
    with contextlib.ExitStack() as locks:
        active = []
        for plan in plans:
            try:
                locks.enter_context(hold_run_dir(plan.run_dir, enabled=cfg.lock_run_dir))
            except RunDirBusy as busy:
                if not in_sweep:
                    raise
                echo(f"skipped: {busy}")
                continue
            active.append(plan)
        return _train_holding_the_locks(cfg, task_names, settings, active, in_sweep, echo, before_writing)


def _train_holding_the_locks(
    cfg: TrainConfig,
    task_names: list[str],
    settings: list[str],
    plans: list[PackedRunPlan],
    in_sweep: bool,
    echo: Any,
    before_writing: Callable[[Path], None] | None,
) -> list[dict[str, Any]]:
    summaries, todo = [], []
    for plan in plans:
        resume = cfg.resume or (in_sweep and holds_run(plan.run_dir))
        final = read_json(plan.run_dir / "final_eval.json")
        if resume and final.get("step", -1) >= cfg.steps:
            echo(f"run {plan.run_dir} is already complete ({final['step']} of {cfg.steps} iterations)")
            summaries.append(final)
        elif not resume:
            check_new_run_dir(plan.run_dir)
            todo.append(plan)
        else:
            todo.append(plan)
    if not todo:
        return summaries
    states = _common_states(todo)
    for plan, state in zip(todo, states, strict=True):
        if state is not None:
            check_same_run(state[1]["run"]["config"], plan.resolved, state[0])
    for plan in todo:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        if before_writing is not None:
            before_writing(plan.run_dir)
    for line in settings:
        echo(f"{line} (a pack of {len(todo)} runs)")
    torch.set_num_threads(int(cfg.torch_threads))
    for warning in resource_warnings(cfg, len(task_names), resolve_device(cfg.device), todo[0].run_dir):
        echo(f"warning: {warning} (for each of the {len(todo)} runs)")
    for plan in todo:
        write_config(plan.run_dir, plan.resolved)

    envs = [make_env(plan.cfg, task_names) for plan in todo]
    monitors: list[RunMonitor] = []
    pack: PackedMTSAC | None = None
    try:
        combiner = dict(cfg.combiner)
        name = str(combiner.pop("name"))
        specs = [RunSpec(plan.cfg.seed, _run_combiner_kwargs(plan.cfg)) for plan in todo]
        config = copy.deepcopy(cfg.agent) if isinstance(cfg.agent, MTSACConfig) else MTSACConfig(**asdict(cfg.agent))
        pack = PackedMTSAC(envs, specs, combiner=name, config=config, device=cfg.device, task_names=task_names)
        pack.diagnostics_every = cfg.log_every
        if states[0] is not None:
            pack.load_run_states([state[1] for state in states])  # type: ignore[index]
            for index, (state, env) in enumerate(zip(states, envs, strict=True)):
                assert state is not None
                restore_rng_state(state[1]["run"]["rng"], env, pack.generators[index])
            echo(f"resuming a pack of {len(todo)} runs at iteration {pack.iteration}")
        for plan, state, env in zip(todo, states, envs, strict=True):
            monitor = RunMonitor(
                plan.cfg,
                plan.run_dir,
                task_names,
                start_iteration=pack.iteration,
                resolved_config=plan.resolved,
                resumed_from=None if state is None else (state[0], pack.iteration),
            )
            monitor.env = env
            monitors.append(monitor)
        try:
            if pack.iteration >= cfg.steps:
                for index, monitor in enumerate(monitors):  # stopped before the final evaluations
                    run = pack.run(index)
                    monitor.write(run.iteration, run.num_timesteps, monitor.finish(run))
            else:
                pack.learn(cfg.steps - pack.iteration, callbacks=monitors)
        except BaseException:
            for monitor in monitors:
                monitor.close(failed=True)
            raise
        for monitor in monitors:
            monitor.close()
        for plan, monitor in zip(todo, monitors, strict=True):
            assert monitor.final_result is not None
            summaries.append(write_final_eval(plan.run_dir, monitor.final_result, pack.iteration))
    except DiskFullError as error:
        error.resumable = next((m.last_checkpoint for m in monitors if m.last_checkpoint is not None), None)
        if pack is not None:
            buffer = sum(t.numel() * t.element_size() for t in pack.replay_buffer.storage.values())
            error.checkpoint_bytes = buffer // len(pack) + tensor_bytes(pack.run_state_dict(0))
        raise
    finally:
        for env in envs:
            env.close()
    return summaries


def _run_combiner_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    combiner = dict(cfg.combiner)
    combiner.pop("name")
    return combiner


def _common_states(plans: list[PackedRunPlan]) -> list[tuple[Path, dict[str, Any]] | None]:
    """Each run's checkpoint at the newest iteration they all have (all ``None``: a fresh start)."""
    available = []
    for plan in plans:
        iterations = {}
        for path in find_checkpoints(plan.run_dir):
            iterations[int(path.stem.split("_")[1])] = path
        available.append(iterations)
    common = sorted(set.intersection(*(set(it) for it in available)), reverse=True)
    for iteration in common:
        try:
            return [(it[iteration], load_checkpoint(it[iteration])) for it in available]
        except CheckpointError:
            continue  # one of them was cut short by a kill: an older common one
    # No iteration that every run saved (killed while the first checkpoints were written, or a run
    # added to the pack): every run starts again, its later records and events dropped.
    return [None] * len(plans)
