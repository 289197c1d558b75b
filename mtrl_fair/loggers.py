"""Where a training run's values and videos go: TensorBoard always, Weights & Biases with ``logger=wandb``.

Each destination is a :class:`RunLogger` (``log_scalars``, ``log_video``, ``flush``, ``close``);
:func:`make_loggers` builds the run's and :class:`RunLoggers` hands every call to each of them, so
:mod:`mtrl_fair.monitor` logs once and never asks where to.

- TensorBoard: scalars, and each video as the animated GIF that ``SummaryWriter.add_video`` would
  write. ``add_video`` itself needs moviepy's ``moviepy.editor``, which moviepy 2 removed; the GIF
  is made here with Pillow from the clip's small preview, and TensorBoard shows it under *Images*.
- Weights & Biases (the optional ``[wandb]`` extra): the same scalars at the same steps, each video
  as its MP4 file with the outcome as caption, and the resolved config. ``WANDB_MODE=offline``
  writes the run under ``<run>/wandb/`` (or ``$WANDB_DIR``) for a later ``wandb sync``. The wandb
  run id is kept in ``<run>/wandb_id.txt``, so that ``resume=true`` continues the same wandb run;
  wandb ignores the points a resumed run logs again at steps it has already seen.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mtrl_fair.disk_full import DiskFullError, writing
from mtrl_fair.envs.video import TaskVideo, gif_bytes

__all__ = [
    "LOGGERS",
    "WANDB_ID_FILE",
    "WANDB_INSTALL",
    "RunLogger",
    "RunLoggers",
    "TensorBoardLogger",
    "WandbLogger",
    "check_logger",
    "make_loggers",
]

LOGGERS: tuple[str, ...] = ("tensorboard", "wandb")
"""``tensorboard``: TensorBoard (and ``metrics.jsonl``); ``wandb``: Weights & Biases as well."""
WANDB_INSTALL = 'pip install -e ".[wandb]" (or pip install "mtrl-fair[wandb]")'
WANDB_ID_FILE = "wandb_id.txt"
EVENTS_FILES = "events.out.tfevents.*"


def check_logger(logger: str) -> None:
    """Raise ``ValueError`` unless ``logger`` is known and its package is installed."""
    if logger not in LOGGERS:
        raise ValueError(f"unknown logger {logger!r}; allowed: {', '.join(LOGGERS)}")
    if logger == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError(
                f"logger=wandb needs Weights & Biases, which is not installed: {WANDB_INSTALL}"
            ) from None


class RunLogger(Protocol):
    """One destination of a run's logged values."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def log_video(self, tag: str, video: TaskVideo, step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """``events.out.tfevents.*`` in the run directory.

    ``purge_step``: TensorBoard drops every event from it on that an earlier attempt left (a killed
    run logs those steps again when resumed), including those of an attempt killed before its first
    checkpoint. A full disk, met in a call here or in the writer's background thread before it,
    raises :class:`~mtrl_fair.disk_full.DiskFullError` and cuts this attempt's file back to its last
    flush, so that no partial event is left; the events after it are all newer than the last
    checkpoint, and are logged again by a resumed run.
    """

    def __init__(self, run_dir: Path, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        before = set(run_dir.glob(EVENTS_FILES))
        try:
            with writing("TensorBoard events", run_dir):
                self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
                self.writer.flush()
        except DiskFullError:
            for new in set(run_dir.glob(EVENTS_FILES)) - before:  # holds no data yet
                new.unlink(missing_ok=True)
            raise
        created = sorted(set(run_dir.glob(EVENTS_FILES)) - before)
        self._events_path: Path | None = created[-1] if created else None
        self._flushed = self._size()

    def _size(self) -> int:
        return self._events_path.stat().st_size if self._events_path is not None else 0

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            with writing("TensorBoard events", self._events_path or self.run_dir):
                yield
        except DiskFullError:
            if self._events_path is not None:
                with contextlib.suppress(OSError):
                    os.truncate(self._events_path, self._flushed)
            raise

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        with self._guarded():
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def log_video(self, tag: str, video: TaskVideo, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        if video.preview is None:
            return
        frames = video.preview
        image = Summary.Image(
            height=frames.shape[1],
            width=frames.shape[2],
            colorspace=frames.shape[3],
            encoded_image_string=gif_bytes(frames, video.preview_fps),
        )
        with self._guarded():
            # The very call add_video makes once moviepy has encoded the GIF.
            self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        """Everything logged so far on disk (a write that failed in the writer's thread raises here)."""
        with self._guarded():
            self.writer.flush()
        self._flushed = self._size()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()


class WandbLogger:
    """A Weights & Biases run mirroring TensorBoard, named after the run directory."""

    def __init__(
        self, run_dir: Path, config: Mapping[str, Any], *, project: str, entity: str | None = None
    ) -> None:
        import wandb

        self._wandb = wandb
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project,
            entity=entity or None,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
        )
        # A resumed run may have raised steps=; the config follows it.
        self.run.config.update(dict(config), allow_val_change=True)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_video(self, tag: str, video: TaskVideo, step: int) -> None:
        clip = self._wandb.Video(str(video.path), caption=video.describe(), format="mp4")
        self.run.log({tag: clip}, step=step)

    def flush(self) -> None:
        """Nothing to do: wandb's own process writes (and uploads) as values come."""

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """Every call goes to each logger, in order."""

    def __init__(self, loggers: Sequence[RunLogger]) -> None:
        self.loggers = list(loggers)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_scalars(values, step)

    def log_video(self, tag: str, video: TaskVideo, step: int) -> None:
        for logger in self.loggers:
            logger.log_video(tag, video, step)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Close every logger, even when one fails (the first failure is raised)."""
        with contextlib.ExitStack() as stack:
            for logger in reversed(self.loggers):
                stack.callback(logger.close)


def make_loggers(
    logger: str,
    run_dir: Path,
    *,
    purge_step: int,
    config: Mapping[str, Any],
    wandb_project: str = "mtrl-fair",
    wandb_entity: str | None = None,
) -> RunLoggers:
    """TensorBoard, plus Weights & Biases when ``logger`` is ``wandb``."""
    check_logger(logger)
    loggers: list[RunLogger] = [TensorBoardLogger(run_dir, purge_step)]
    if logger == "wandb":
        loggers.append(WandbLogger(run_dir, config, project=wandb_project, entity=wandb_entity))
    return RunLoggers(loggers)
