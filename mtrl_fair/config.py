"""The schemas of the Hydra configs in ``configs/``, and their validation.

The YAML files in ``configs/`` are merged into these dataclasses, so a misspelt key or a value of the
wrong type is rejected by Hydra while composing, before anything starts. :func:`validate_train_config`
then checks the ranges and names (benchmark, tasks, combiner and its hyperparameters, device) and
raises one :class:`ConfigError` line naming what is wrong and what is allowed.

The groups are shallow on purpose: ``benchmark/`` (``mt10``, ``mt50``), ``agent/`` (``mtsac``,
``mtsac_paper``) and ``combiner/`` (one file per registry name). A combiner is found in the registry
by its ``name`` key; its other keys are its hyperparameters, passed to
:func:`mtrl_fair.combiners.make` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from mtrl_fair.agents.config import MTSACConfig

__all__ = ["BenchmarkConfig", "ConfigError", "TrainConfig", "register_schemas", "validate_train_config"]


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message names the allowed values."""


@dataclass
class BenchmarkConfig:
    name: str = "MT10"
    """``MT10`` or ``MT50``."""
    tasks: list[str] | None = None
    """A subset of the benchmark's tasks, e.g. ``[reach-v3, drawer-close-v3]``; null: all."""
    vector_strategy: str = "auto"
    """``sync`` (one process), ``async`` (one process per task) or ``auto`` (async with a GPU update
    and at least four cores, else sync)."""
    max_episode_steps: int = 500


@dataclass
class TrainConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    agent: MTSACConfig = field(default_factory=MTSACConfig)
    combiner: dict[str, Any] = field(default_factory=lambda: {"name": "fairgrad"})
    """``name`` (a registry name) plus the combiner's hyperparameters."""
    seed: int = 0
    steps: int = 2_000_000
    """Training iterations; each steps every task's env once and makes one update."""
    device: str = "auto"
    torch_threads: int | str = "auto"
    """torch's CPU threads in the trainer: ``auto`` is 1 with a GPU update (the simulators need the
    cores), torch's own default on the CPU."""
    log_every: int = 1_000
    """Iterations between logged points (also the period of the gradient diagnostics)."""
    checkpoint_every: int = 50_000
    keep_checkpoints: int = 2
    eval_every: int = 100_000
    """Iterations between evaluations during training (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per task in the evaluations during training."""
    final_eval_episodes: int = 50
    """Episodes per task in the evaluation at the end (Meta-World's protocol: 50)."""
    resume: bool = False
    progress: bool = True
    lock_run_dir: bool = True
    pack: bool = False
    """In a sweep (``-m``), train the runs that differ only in ``seed`` (and ``combiner.alpha``) in
    one process, one batched update (:mod:`mtrl_fair.packing`)."""
    pack_runs: list[str] = field(default_factory=list)
    """The runs of a pack, each as its own overrides (``"combiner.alpha=2 seed=0"``); the packing of
    a sweep fills it, and given alone it trains those runs, each in a directory of ``hydra.run.dir``."""
    """Hold the run directory's lock while training (:mod:`mtrl_fair.run_lock`); ``false`` only for a
    filesystem without file locks, where nothing then keeps two processes apart."""
    video_every: int = 0
    """Iterations between videos of one episode per task, made at evaluation points (a multiple of
    ``eval_every``) and at the end, into ``videos/step_<N>/`` and the loggers; 0: none."""
    video_size: int = 240
    """Pixels a side of the videos (a multiple of 16)."""
    video_camera: str = "corner3"
    """A Meta-World camera: corner3, corner, corner2, corner4, topview, behindGripper, gripperPOV, free."""
    logger: str = "tensorboard"
    """``tensorboard``, or ``wandb``: Weights & Biases as well (``pip install -e ".[wandb]"``)."""
    wandb_project: str = "mtrl-fair"
    wandb_entity: str | None = None
    """The wandb team or user; null: your default entity."""


def register_schemas() -> None:
    """Make ``train_schema`` available to the ``defaults`` list of ``configs/train.yaml``."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def validate_train_config(cfg: TrainConfig) -> list[str]:
    """Check every value before any environment starts; return the resolved task names."""
    from mtrl_fair.agents.device import resolve_device
    from mtrl_fair.combiners import make
    from mtrl_fair.envs import RenderingError, resolve_tasks
    from mtrl_fair.envs.benchmarks import VECTOR_STRATEGIES
    from mtrl_fair.loggers import check_logger

    try:
        tasks = resolve_tasks(cfg.benchmark.name, cfg.benchmark.tasks)
        if cfg.benchmark.vector_strategy not in VECTOR_STRATEGIES:
            raise ValueError(
                f"benchmark.vector_strategy must be one of {', '.join(VECTOR_STRATEGIES)}, "
                f"got {cfg.benchmark.vector_strategy!r}"
            )
        threads = cfg.torch_threads
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"torch_threads must be auto or an integer >= 1, got {threads!r}")
        if not 1 <= cfg.benchmark.max_episode_steps <= 500:
            raise ValueError(
                f"benchmark.max_episode_steps must be in [1, 500] (Meta-World's limit), got {cfg.benchmark.max_episode_steps}"
            )
        cfg.agent.validate()
        combiner = dict(cfg.combiner)
        if "name" not in combiner:
            raise ValueError("the combiner config needs a 'name' key, e.g. combiner=fairgrad")
        name = str(combiner.pop("name"))
        try:
            make(name, **combiner)
        except ValueError as error:
            raise ValueError(f"combiner {name}: {error}") from None
        if cfg.steps < 1:
            raise ValueError(f"steps must be >= 1, got {cfg.steps}")
        for key in (
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "eval_episodes",
            "final_eval_episodes",
        ):
            if getattr(cfg, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: evaluate only at the end), got {cfg.eval_every}")
        resolve_device(cfg.device)
        if cfg.pack or cfg.pack_runs:
            _check_pack(cfg, name)
        check_logger(cfg.logger)
        _check_videos(cfg)
    except (ValueError, RenderingError) as error:
        raise ConfigError(str(error)) from None
    return tasks


def _check_pack(cfg: TrainConfig, combiner: str) -> None:
    """A pack's combiner can be batched per run, and its runs differ only in what may differ."""
    from mtrl_fair.agents.packed import PACKABLE_COMBINERS
    from mtrl_fair.packing import run_overrides

    if combiner not in PACKABLE_COMBINERS:
        raise ValueError(
            f"combiner {combiner!r} cannot be packed (its solve is stateful or a loop); packable "
            f"combiners: {', '.join(PACKABLE_COMBINERS)}; drop pack=true to train its runs one by one"
        )
    for run in cfg.pack_runs:
        run_overrides(run)
    if len(set(cfg.pack_runs)) != len(cfg.pack_runs):
        raise ValueError(f"pack_runs lists a run twice: {list(cfg.pack_runs)}")


def _check_videos(cfg: TrainConfig) -> None:
    """The video settings, and a working rendering backend when videos are asked for."""
    from mtrl_fair.envs.rendering import check_camera, prepare_rendering
    from mtrl_fair.envs.video import check_video_size

    if cfg.video_every < 0:
        raise ValueError(f"video_every must be >= 0 (0: no videos), got {cfg.video_every}")
    if not cfg.video_every:
        return
    if not cfg.eval_every or cfg.video_every % cfg.eval_every:
        raise ValueError(
            f"video_every must be a multiple of eval_every ({cfg.eval_every}): videos are made at "
            f"evaluation points; got {cfg.video_every}"
        )
    check_video_size(cfg.video_size)
    check_camera(cfg.video_camera)
    prepare_rendering()
