"""One writer per run directory: an exclusive lock that the operating system holds for the writer.

A run directory is written by one process at a time. That process takes an exclusive ``flock`` on
``<run_dir>/.lock`` before it writes anything there and keeps it until the run has ended, final
evaluation included. The kernel drops the lock when the process ends, however it ends (a normal
exit, an exception, SIGKILL, a crash), so a lock never outlives its holder and there is nothing to
clean up. A second process finds the lock taken and stops at once with :class:`RunDirBusy`, which
names the holder: right after taking the lock, the holder writes its host, pid and start time into
the lock file, which others only read.

On Linux the NFS client emulates ``flock`` with POSIX byte-range locks on the whole file, held by
the NFS server, so the lock keeps processes on different nodes apart; NFSv4 holds them under the
client's lease, and the locks of a node that is lost expire with its lease. A filesystem that
refuses locks makes :meth:`RunLock.acquire` raise :class:`LockUnavailable` rather than go on
unprotected; ``lock_run_dir=false`` (the ``enabled`` switch of :func:`hold_run_dir`) trains without
the lock there.

``mtrl-fair eval`` and ``mtrl-fair report`` never take the lock: they read a run while it is written.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not a POSIX system: there is no flock to take
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "Holder",
    "LockUnavailable",
    "RunDirBusy",
    "RunLock",
    "check_not_held",
    "hold_run_dir",
    "read_holder",
]

LOCK_FILE = ".lock"
# flock's answers when another open file holds the lock (EACCES on some network filesystems).
_CONTENDED = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
# Bound on re-opening a lock file that was replaced between our open and our lock (see acquire).
_REOPEN_ATTEMPTS = 10


@dataclass(frozen=True)
class Holder:
    """The process that holds a run directory, as it wrote itself into the lock file."""

    host: str
    pid: int
    since: float
    """Unix time at which it took the lock."""

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.since).astimezone().isoformat(timespec="seconds")
        return f"pid {self.pid} on host {self.host} since {when}"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""

    def __init__(self, run_dir: Path, holder: Holder | None) -> None:
        self.run_dir, self.holder = run_dir, holder
        who = (
            holder.describe()
            if holder is not None
            else "another process (starting: its pid is not written yet)"
        )
        super().__init__(f"{run_dir} is in use by {who}")


class LockUnavailable(RuntimeError):
    """The run directory's filesystem does not support file locks."""

    def __init__(self, run_dir: Path, reason: str) -> None:
        self.run_dir = run_dir
        super().__init__(
            f"cannot lock {run_dir}: its filesystem refuses file locks ({reason}), so nothing would keep a "
            "second process from writing the same run; use a run directory on a disk with locks (local, "
            "NFSv4), or set lock_run_dir=false and start only one process per run directory"
        )


class RunLock:
    """The exclusive lock on ``run_dir``: :meth:`acquire` it before writing there, :meth:`release` at the end."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, and write this process into the lock file.

        Raises:
            RunDirBusy: another process holds it (its details are in the exception).
            LockUnavailable: the filesystem refuses locks (or there is no ``flock`` on this system).
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock")
        if fcntl is None:
            raise LockUnavailable(self.run_dir, "this system has no flock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_REOPEN_ATTEMPTS):
            fd, created = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _holder_in(fd) if error.errno in _CONTENDED else None
                os.close(fd)
                if error.errno in _CONTENDED:
                    raise RunDirBusy(self.run_dir, holder) from None
                if created:  # leave nothing behind in a directory we could not take
                    self.path.unlink(missing_ok=True)
                raise LockUnavailable(self.run_dir, f"flock: {error.strerror}") from None
            # The file may have been removed (or replaced) while we waited for the lock: a lock on an
            # inode that the path no longer names keeps nobody out. Lock the one that is there now.
            if _names_same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise RunDirBusy(self.run_dir, None)
        self._fd = fd
        _holding.add(self)
        _write_holder(fd)

    def release(self) -> None:
        """Drop the lock (the holder's details stay in the file; they are read only while it is held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _holding.discard(self)
        try:
            assert fcntl is not None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Every lock this process holds; forked children close their copies (see _forget_in_child).
_holding: set[RunLock] = set()
# The locks of hold_run_dir, by the real path of their run directory: a nested hold_run_dir (the
# command around run_training) finds the lock it already has instead of contending with itself.
_held_locks: dict[str, RunLock] = {}


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike[str], *, enabled: bool = True) -> Iterator[RunLock | None]:
    """Hold ``run_dir``'s lock for the body (``enabled=False``: no lock, for a filesystem without
    locks). Re-entrant within a process: an inner use keeps the outer one's lock."""
    if not enabled:
        yield None
        return
    key = os.path.realpath(run_dir)
    outer = _held_locks.get(key)
    if outer is not None and outer.held:
        yield outer
        return
    lock = RunLock(run_dir)
    lock.acquire()
    _held_locks[key] = lock
    try:
        yield lock
    finally:
        _held_locks.pop(key, None)
        lock.release()


def check_not_held(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`RunDirBusy` if a live process holds ``run_dir`` now; create nothing.

    For the checks before a run starts, so that a second process is told who holds the run rather
    than being refused for another reason. A free lock is taken and dropped at once.
    """
    if fcntl is None:
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return  # no lock file (no run yet), or not ours to open: acquire() says what is wrong
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _CONTENDED:
            raise RunDirBusy(Path(run_dir), _holder_in(fd)) from None
        return  # a filesystem without locks: acquire() refuses it with its own message
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_holder(run_dir: str | os.PathLike[str]) -> Holder | None:
    """The holder the lock file names: the live holder while the lock is held, else the last one."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return _holder_in(fd)
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """The lock file opened for writing (an exclusive lock over NFS needs it), and whether we made it.

    Never truncated on opening: its contents belong to whoever holds it. The descriptor is not
    inherited across exec (Python's default), and forked children close it (_forget_in_child).
    """
    flags = os.O_RDWR | os.O_NOFOLLOW
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags), False


def _names_same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    return os.path.samestat(os.fstat(fd), named)


def _write_holder(fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    data = (json.dumps(record) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)  # another node reads it through the server
    except OSError:
        # Only the message of a second process needs these details (a full disk must not stop the
        # run here: its first real write reports the disk); the lock holds without them.
        pass


def _holder_in(fd: int) -> Holder | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return Holder(host=str(record["host"]), pid=int(record["pid"]), since=float(record["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # empty (the holder is starting) or written by something else


def _forget_in_child() -> None:
    """In a forked child (an env worker), close the inherited lock descriptors.

    A flock belongs to the open file, which a fork shares: a worker that kept its copy would hold
    the run after its parent was killed, and the next resume would be refused until it exited.
    Closing a copy does not release the parent's lock.
    """
    for lock in list(_holding):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _holding.clear()
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
