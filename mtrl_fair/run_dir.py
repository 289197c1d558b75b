"""The layout of a run directory, and the checks on it before a run starts or resumes.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per
logged point, each with its ``step``), TensorBoard's ``events.out.tfevents.*``, and
``checkpoints/step_<iteration>.pt`` with a ``.sha256`` beside each. This module finds those files
and says whether a directory already holds a run; :mod:`mtrl_fair.monitor` writes them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint
from mtrl_fair.config import ConfigError, TrainConfig

__all__ = [
    "CHECKPOINT_DIR",
    "check_new_run_dir",
    "check_same_run",
    "find_checkpoints",
    "holds_run",
    "latest_checkpoint",
    "read_json",
    "truncate_metrics",
]

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")
# Keys of the resolved config that must not change when a run is resumed.
_FIXED_ON_RESUME = ("benchmark", "agent", "combiner", "seed")
# Within those, the keys that change only how fast a run goes, not what it computes: a run may
# resume on another machine, where their auto values resolve differently.
_SPEED_KEYS = {
    "agent": ("cuda_graph", "overlap_env_steps", "chunk_size"),
    "benchmark": ("vector_strategy",),
}


def find_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by iteration in the file name)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and matches its checksum, with its contents.

    A newer file that fails (a run killed between writing a checkpoint and its checksum) is skipped
    in favour of the previous one.
    """
    for path in reversed(find_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError:
            continue
    return None


def holds_run(run_dir: str | Path) -> bool:
    """Whether a run has started in ``run_dir`` (it has written a checkpoint or a metrics record)."""
    run_dir = Path(run_dir)
    return bool(find_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").exists()


def check_new_run_dir(run_dir: str | Path) -> None:
    """Refuse to start a new run where a run already is (``resume=true`` continues it instead)."""
    run_dir = Path(run_dir)
    if holds_run(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run; pass resume=true to continue it, or choose another hydra.run.dir"
        )


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run with other settings than those it was saved with.

    Keys the saved run does not have (added to the config after it was written) count as their
    current default values; keys that change only the speed (:data:`_SPEED_KEYS`) are not compared.
    """
    defaults: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(TrainConfig))  # type: ignore[assignment]
    for key in _FIXED_ON_RESUME:
        before, now = _comparable(key, saved.get(key), defaults), _comparable(key, current.get(key), defaults)
        if before != now:
            raise ConfigError(
                f"resume=true but {key} differs from the run saved in {path} ({before} there, "
                f"{now} now); resume with the original settings or start a new run directory"
            )


def _comparable(key: str, value: Any, defaults: dict[str, Any]) -> Any:
    if not isinstance(value, dict) or not isinstance(defaults.get(key), dict):
        return value
    merged = {**defaults[key], **value}
    return {name: item for name, item in merged.items() if name not in _SPEED_KEYS.get(key, ())}


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop logged points after ``last_step``: a resumed run logs them again, without duplicates."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
