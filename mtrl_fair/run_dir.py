"""The layout of a run directory, and the checks on it before a run starts or resumes.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per
logged point, each with its ``step``), TensorBoard's ``events.out.tfevents.*``, and
``checkpoints/step_<iteration>.pt`` with a ``.sha256`` beside each. This module finds those files
and says whether a directory already holds a run; :mod:`mtrl_fair.monitor` writes them, through
:func:`append_line` and :func:`write_text_atomically`, which leave no partial file behind when a write
fails (a full disk) or the process is killed.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtrl_fair.agents.checkpoint import CheckpointError, load_checkpoint
from mtrl_fair.config import ConfigError, TrainConfig

__all__ = [
    "CHECKPOINT_DIR",
    "append_line",
    "check_new_run_dir",
    "check_same_run",
    "find_checkpoints",
    "holds_run",
    "latest_checkpoint",
    "read_json",
    "truncate_metrics",
    "write_text_atomically",
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
    in favour of the previous one, and so is one that the run writing this directory removes while
    it is read (it keeps only the newest few).
    """
    for path in reversed(find_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except (CheckpointError, FileNotFoundError):
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
    """Drop logged points after ``last_step``: a resumed run logs them again, without duplicates.

    The points are in step order, so the file is cut back after the last point kept, which writes
    nothing (it works on a full disk, and a kill cannot leave it half rewritten). A line cut short
    by a kill (no newline, or no JSON) ends the kept part. A file out of order (written by two
    processes at once before runs were locked) is rewritten atomically instead.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    kept, end, in_order, offset = [], 0, True, 0
    for line in data.splitlines(keepends=True):
        start, offset = offset, offset + len(line)
        try:
            record = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("step", math.inf) > last_step:
            continue
        kept.append(line)
        in_order = in_order and start == end
        end = offset
    if in_order:
        if end < len(data):
            os.truncate(path, end)
    else:
        write_text_atomically(path, b"".join(kept).decode())


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (ending in a newline) to ``path``; if the write fails, cut the file back.

    A write that fails part-way (a full disk) would otherwise leave half a line, and the next
    record glued to it.
    """
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException:
            os.ftruncate(fd, start)  # frees space, so it works on a full disk
            raise
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a failed write (a full disk) or a kill leaves the old file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
