"""The hyperparameters of multi-task SAC (:class:`MTSACConfig`) and their validation.

The defaults are the reference Meta-World v3 MTSAC set-up. ``configs/agent/mtsac.yaml`` is merged
into this dataclass by Hydra, so a misspelt key is an error while composing, and
:meth:`MTSACConfig.validate` turns any value out of range into one :class:`ValueError` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["LOSS_GROUPS", "MATMUL_PRECISIONS", "MTSACConfig"]

LOSS_GROUPS = ("critic", "actor", "temperature")
"""The per-task losses of SAC; ``MTSACConfig.combine`` names those that go through the combiner."""
MATMUL_PRECISIONS = ("highest", "high")


@dataclass
class MTSACConfig:
    """Hyperparameters of multi-task SAC (defaults: the reference Meta-World v3 MTSAC set-up)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [400, 400, 400])
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size_per_task: int = 128
    buffer_size_per_task: int = 100_000
    """Replay capacity of each task (1e6 transitions in all for MT10, 5e6 for MT50)."""
    warmup_steps: int = 5_000
    """Iterations of uniformly random actions before the first update."""
    initial_temperature: float = 1.0
    shared_temperature: bool = False
    """One temperature for all tasks (the FairGrad paper's RL code) instead of one per task."""
    target_entropy: float | None = None
    """``None``: minus the action dimension, as in SAC."""
    combine: list[str] = field(default_factory=lambda: ["critic", "actor"])
    """Which per-task losses go through the combiner: any of ``critic``, ``actor``, ``temperature``."""
    use_task_id: bool = True
    """Feed the one-hot task id to the networks. ``False`` drops it (the FairGrad paper's RL code)."""
    chunk_size: int | None = None
    """Compute per-task gradients this many tasks at a time (bounds memory for MT50); None: all."""
    max_consecutive_skips: int = 100
    """Stop training after this many updates in a row had a non-finite loss or gradient."""
    cuda_graph: bool | str = "auto"
    """Record the update once as a CUDA graph and replay it every iteration: ``auto`` (on CUDA,
    the default), ``true`` or ``false``.

    One launch replaces the hundreds of small kernels of an eager update, which is launch-bound on
    a GPU. The first updates run eagerly (on a side stream, to warm up), the iterations that
    compute diagnostics run eagerly, and a combiner whose solve cannot be captured falls back to
    the eager update with a one-line warning. Never on the CPU.
    """
    overlap_env_steps: bool | str = "auto"
    """Step the envs in a background thread while the update runs (after warm-up): ``auto`` (on
    CUDA, the default), ``true`` or ``false``.

    The update then samples the buffer before the current step's transition is added, one
    transition later than in the sequential loop. It pays when the update runs on a GPU: the
    host steps the simulators while the device computes. On the CPU the update is the whole cost
    and both compete for the same cores, so ``auto`` leaves it off there.
    """
    matmul_precision: str = "highest"
    """float32 matrix products: ``highest`` (full float32, the default) or ``high`` (TF32 on
    Ampere and newer GPUs, as JAX's default precision there; no effect on the CPU). It is torch's
    process-wide setting (``torch.set_float32_matmul_precision``), applied when the agent is built."""

    def validate(self) -> None:
        """Raise a one-line :class:`ValueError` for any value outside its allowed range."""
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ValueError(
                f"agent.hidden_sizes must be a non-empty list of positive widths, got {list(self.hidden_sizes)}"
            )
        for name in ("actor_lr", "critic_lr", "temperature_lr", "initial_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"agent.{name} must be a finite number > 0, got {value}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"agent.gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"agent.tau must be in (0, 1], got {self.tau}")
        for name in ("batch_size_per_task", "buffer_size_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"agent.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(
                f"agent.target_entropy must be a finite number or null, got {self.target_entropy}"
            )
        unknown = [name for name in self.combine if name not in LOSS_GROUPS]
        if unknown or len(set(self.combine)) != len(self.combine):
            raise ValueError(
                f"agent.combine must list distinct loss names from {', '.join(LOSS_GROUPS)}, got {list(self.combine)}"
            )
        if "temperature" in self.combine and not self.shared_temperature:
            raise ValueError(
                "agent.combine includes 'temperature' but each task has its own temperature, so there is "
                "nothing shared to combine; set agent.shared_temperature=true or drop 'temperature'"
            )
        if self.max_consecutive_skips < 1:
            raise ValueError(f"agent.max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"agent.chunk_size must be >= 1 or null, got {self.chunk_size}")
        for name in ("cuda_graph", "overlap_env_steps"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or value == "auto"):
                raise ValueError(f"agent.{name} must be auto, true or false, got {value!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"agent.matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {self.matmul_precision!r}"
            )
