"""The run directory's lock: one holder at a time, named to the others, gone with its holder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_cli import TINY

from mtrl_fair import run_lock
from mtrl_fair.cli import EXIT_RUN_DIR_BUSY, main
from mtrl_fair.run_lock import (
    LOCK_FILE,
    LockUnavailable,
    RunDirBusy,
    RunLock,
    check_not_held,
    hold_run_dir,
    read_holder,
)


def test_the_holder_writes_itself_into_the_lock_file(tmp_path: Path) -> None:
    before = time.time()
    with RunLock(tmp_path / "run") as lock:
        assert lock.held
        holder = read_holder(tmp_path / "run")
        assert holder is not None
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        assert before <= holder.since <= time.time()
    assert not lock.held


def test_a_second_lock_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    # flock locks belong to the open file, so two locks of one process exclude each other too.
    with RunLock(tmp_path):
        with pytest.raises(RunDirBusy) as refused:
            RunLock(tmp_path).acquire()
        with pytest.raises(RunDirBusy):
            check_not_held(tmp_path)
    message = str(refused.value)
    assert refused.value.holder is not None
    assert f"pid {os.getpid()} on host {socket.gethostname()} since " in message
    assert len(message.splitlines()) == 1
    # Released: it can be taken again, and the check passes.
    check_not_held(tmp_path)
    with RunLock(tmp_path):
        pass


def test_hold_run_dir_is_reentrant_and_can_be_switched_off(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path) as outer:
        with hold_run_dir(tmp_path / ".") as inner:  # the same directory by another name
            assert inner is outer
        assert outer is not None
        assert outer.held  # the inner use did not release it
    assert not outer.held
    with hold_run_dir(tmp_path / "off", enabled=False) as none:
        assert none is None
    assert not (tmp_path / "off").exists()


def test_checking_a_directory_without_a_run_creates_nothing(tmp_path: Path) -> None:
    check_not_held(tmp_path / "nothing")
    check_not_held(tmp_path)
    assert not (tmp_path / "nothing").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_filesystem_without_locks_is_refused_with_the_opt_out_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_lock.fcntl is not None

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with pytest.raises(LockUnavailable) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert "lock_run_dir=false" in message
    assert os.strerror(errno.ENOLCK) in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / LOCK_FILE).exists()  # nothing left behind
    check_not_held(tmp_path)  # the check before a run leaves the verdict to acquire()
    with hold_run_dir(tmp_path, enabled=False):
        pass


# A process that takes the lock, optionally forks a child that outlives it, says so and waits.
_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from mtrl_fair.run_lock import RunLock
    lock = RunLock(sys.argv[1])
    lock.acquire()
    if sys.argv[2] == "fork":
        started, tell = os.pipe()
        if os.fork() == 0:  # an env worker, still alive after its parent was killed
            os.write(tell, b"1")  # its code runs after the fork's handlers have
            time.sleep(60)
            os._exit(0)
        os.read(started, 1)
    print("held", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("child", ["none", "fork"])
def test_the_lock_does_not_outlive_a_killed_holder(tmp_path: Path, child: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), child],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy) as refused:
            RunLock(tmp_path).acquire()
        assert refused.value.holder is not None
        assert refused.value.holder.pid == holder.pid
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        # The forked child (if any) is still running, and does not keep the run: the lock is free
        # at once, with no waiting and nothing to clean up.
        with RunLock(tmp_path):
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)  # the child too
        holder.wait()


@pytest.mark.usefixtures("in_process_cli")
def test_the_command_refuses_a_filesystem_without_locks_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_lock.fcntl is not None

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "steps=60", f"hydra.run.dir={run_dir}"]) == EXIT_RUN_DIR_BUSY
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot lock {run_dir}: its filesystem refuses file locks")
    assert "lock_run_dir=false" in lines[0]
    assert not run_dir.exists()  # nothing left behind

    assert main(["train", *TINY, "steps=60", "lock_run_dir=false", f"hydra.run.dir={run_dir}"]) == 0
    assert f"warning: lock_run_dir=false: nothing keeps a second process from writing {run_dir}" in (
        capsys.readouterr().out
    )
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == 60
    assert not (run_dir / LOCK_FILE).exists()
