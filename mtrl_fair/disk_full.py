"""A full disk, told in one line: which write failed, what a checkpoint needs, what can be resumed.

Every write of a run (checkpoints, ``metrics.jsonl``, TensorBoard's events, the config files, the
final evaluation) happens inside :func:`writing`, which turns an ``OSError`` of errno ENOSPC (no
space left) or EDQUOT (quota exceeded) into a :class:`DiskFullError` naming that write. The run
then adds what a checkpoint needs and the last checkpoint it can be resumed from, and the command
prints the whole as one line. The writers themselves leave no partial file behind (checkpoints are
written atomically, a metrics line that does not fit is cut off again).

TensorBoard writes from a background thread: a write that fails there ends the thread (which would
print a traceback) and is raised again in the main thread at the next ``add_scalar`` or ``flush``.
:func:`quiet_disk_full_in_threads` keeps the first of these quiet; the second is the one reported.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DISK_FULL_ERRNOS",
    "DiskFullError",
    "format_bytes",
    "is_disk_full",
    "quiet_disk_full_in_threads",
    "writing",
]

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException | None) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class DiskFullError(RuntimeError):
    """A write of the run failed because its disk (or the user's quota) is full.

    Attributes:
        what: the write that failed, e.g. ``"checkpoint"``, ``"metrics"``, ``"TensorBoard events"``.
        path: the file it was writing.
        reason: the operating system's words (``No space left on device``, ``Disk quota exceeded``).
        checkpoint_bytes: what one checkpoint of this run takes with a full replay buffer (set by
            the run once it knows its agent).
        resumable: the last checkpoint the run can be resumed from and its iteration (None: none
            yet, a resumed run starts again).
    """

    def __init__(self, what: str, path: Path, cause: OSError) -> None:
        super().__init__(what, path)
        self.what, self.path = what, path
        self.reason = cause.strerror or str(cause)
        self.checkpoint_bytes: int | None = None
        self.resumable: tuple[Path, int] | None = None

    def __str__(self) -> str:
        parts = [f"disk full: writing {self.what} to {self.path} failed ({self.reason})"]
        if self.checkpoint_bytes is not None:
            parts.append(f"a checkpoint of this run takes up to {format_bytes(self.checkpoint_bytes)}")
        if self.resumable is not None:
            path, iteration = self.resumable
            parts.append(f"the last checkpoint to resume from is {path} (iteration {iteration})")
        else:
            parts.append("there is no checkpoint yet (a resume starts the run again)")
        parts.append("free space, then run the same command with resume=true")
        return "; ".join(parts)


@contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """Report a full disk in the body as a :class:`DiskFullError` naming ``what`` and ``path``."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(what, path, error) from error
        raise


@contextmanager
def quiet_disk_full_in_threads() -> Iterator[None]:
    """In the body, a background thread that dies of a full disk prints no traceback.

    The run meets the same error in its main thread (TensorBoard raises it again there) and reports
    it in one line; any other exception of a thread is printed as usual.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not is_disk_full(args.exc_value):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
