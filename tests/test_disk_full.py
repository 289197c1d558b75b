"""A full disk stops a run with one line, leaves nothing partial, and the run resumes cleanly.

Each test runs ``mtrl-fair train`` in this process with one write failing part-way with ENOSPC, as
a full disk makes it fail: the checkpoint (its data file, or its checksum after the data file is in
place), a line of ``metrics.jsonl``, a TensorBoard event (written by TensorBoard's own thread).
The run must exit with code 5 and one line naming the write, the size of a checkpoint and the
checkpoint to resume from; leave no partial file and every earlier checkpoint as it was; and then,
with the disk "freed", resume with every logged step exactly once, in metrics.jsonl and in
TensorBoard.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from mtrl_fair.agents import load_checkpoint
from mtrl_fair.cli import EXIT_DISK_FULL, main

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd"),
    pytest.mark.usefixtures("in_process_cli"),
]

STEPS, FAILING_STEP = 100, 60
TINY = [
    "benchmark.tasks=[reach-v3,drawer-close-v3]",
    "agent.hidden_sizes=[32,32]",
    "agent.batch_size_per_task=16",
    "agent.warmup_steps=20",
    "benchmark.max_episode_steps=40",
    "log_every=10",
    "checkpoint_every=20",
    "eval_every=0",
    "final_eval_episodes=1",
    "progress=false",
    "device=cpu",
    f"steps={STEPS}",
]
LOGGED_STEPS = list(range(30, STEPS + 1, 10))  # from the first update after the warm-up
NO_SPACE = os.strerror(errno.ENOSPC)


def no_space() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


def path_of(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def train(run_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["train", *TINY, *extra, f"hydra.run.dir={run_dir}"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}


def logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)  # no half line
    return [json.loads(line)["step"] for line in lines]


def tensorboard_steps(run_dir: Path) -> list[int]:
    """The steps TensorBoard shows for one scalar, reading every event file as TensorBoard does."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [event.step for event in events.Scalars("charts/iterations_per_s")]


def assert_whole_records(events_file: Path) -> None:
    """Every record of a TensorBoard file is complete (length, its CRC, data, its CRC)."""
    data, offset = events_file.read_bytes(), 0
    while offset < len(data):
        assert offset + 12 <= len(data), f"partial record header at byte {offset} of {events_file.name}"
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += 12 + length + 4
    assert offset == len(data), f"partial record at the end of {events_file.name}"


def stop_line(err: str, what: str, resumable_step: int, run_dir: Path) -> str:
    """The one error line of a run stopped by a full disk, checked."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: disk full: writing {what} to "), line
    assert f"failed ({NO_SPACE})" in line
    assert "a checkpoint of this run takes up to " in line
    resumable = run_dir / "checkpoints" / f"step_{resumable_step:09d}.pt"
    assert f"the last checkpoint to resume from is {resumable} (iteration {resumable_step})" in line
    assert "resume=true" in line
    assert line.endswith(f"(exit code {EXIT_DISK_FULL})")
    return line


def resume_after_freeing_space(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, resumable_step: int
) -> None:
    monkeypatch.undo()  # the disk has room again
    code, out, err = train(run_dir, capsys, "resume=true")
    assert code == 0, err
    assert f"at iteration {resumable_step}" in out
    assert logged_steps(run_dir) == LOGGED_STEPS
    assert tensorboard_steps(run_dir) == LOGGED_STEPS
    assert json.loads((run_dir / "final_eval.json").read_text())["step"] == STEPS


@pytest.mark.parametrize("failing", ["data file", "checksum"])
def test_a_checkpoint_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    run_dir = tmp_path / "run"
    target = f"step_{FAILING_STEP:09d}.pt" + (".sha256" if failing == "checksum" else "")
    before_failure: dict[str, bytes] = {}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # Where a filesystem with delayed allocation reports a full disk: when the data is flushed.
        name = path_of(fd).name
        if name.startswith(f".{target}.") and not name.startswith(f".{target}.sha256."):
            before_failure.update(
                {k: v for k, v in checkpoint_files(run_dir).items() if not k.startswith(".")}
            )
            raise no_space()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, out, err = train(run_dir, capsys)
    assert code == EXIT_DISK_FULL
    assert "Traceback" not in out + err
    stop_line(err, "checkpoint", FAILING_STEP - 20, run_dir)
    # Nothing partial: no temporary file, no data file without its checksum; the checkpoints that
    # were there when the disk filled are there, byte for byte, and load.
    after = checkpoint_files(run_dir)
    assert set(after) == {f"step_{step:09d}.pt{suffix}" for step in (20, 40) for suffix in ("", ".sha256")}
    assert after == {k: v for k, v in before_failure.items() if k in after}
    load_checkpoint(run_dir / "checkpoints" / f"step_{FAILING_STEP - 20:09d}.pt")
    assert logged_steps(run_dir)[-1] == FAILING_STEP  # its record comes before its checkpoint
    resume_after_freeing_space(run_dir, capsys, monkeypatch, FAILING_STEP - 20)


def test_a_metrics_line_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    real_write: Callable[[int, bytes], int] = os.write

    def write(fd: int, data: bytes) -> int:
        if (
            bytes(data[:16]).startswith(b'{"step": %d, ' % FAILING_STEP)
            and path_of(fd).name == "metrics.jsonl"
        ):
            real_write(fd, data[: len(data) // 2])  # the disk fills part-way through the line
            raise no_space()
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    code, out, err = train(run_dir, capsys)
    assert code == EXIT_DISK_FULL
    assert "Traceback" not in out + err
    stop_line(err, "metrics", FAILING_STEP - 20, run_dir)
    assert logged_steps(run_dir) == list(range(30, FAILING_STEP, 10))  # the half line was cut off
    resume_after_freeing_space(run_dir, capsys, monkeypatch, FAILING_STEP - 20)


def test_a_tensorboard_event_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    real_write = RecordWriter.write

    def write(self: RecordWriter, data: bytes) -> None:
        # Runs in TensorBoard's writer thread: the error reaches the run at its next TensorBoard call.
        if event_pb2.Event.FromString(data).step == FAILING_STEP:
            self._writer.write(struct.pack("<Q", len(data)))  # a record cut short by the full disk
            raise no_space()
        real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", write)
    printed: list[BaseException | None] = []  # what the command would print of dying threads
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    code, out, err = train(run_dir, capsys)
    assert code == EXIT_DISK_FULL
    assert "Traceback" not in out + err
    assert printed == []  # the writer thread's death is reported once, by the run, in one line
    stop_line(err, "TensorBoard events", FAILING_STEP - 20, run_dir)
    for events_file in run_dir.glob("events.out.tfevents.*"):
        assert_whole_records(events_file)
    resume_after_freeing_space(run_dir, capsys, monkeypatch, FAILING_STEP - 20)


def test_a_disk_full_before_the_run_starts_names_the_checkpoint_to_resume_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    code, _, err = train(run_dir, capsys, "steps=40")
    assert code == 0, err
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if path_of(fd).parent.name == ".hydra":  # the first file a resumed run writes
            raise no_space()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, out, err = train(run_dir, capsys, "resume=true")
    assert code == EXIT_DISK_FULL
    assert "Traceback" not in out + err
    line = err.strip()
    assert line.startswith("error: disk full: writing Hydra's record of the job to ")
    assert f"the last checkpoint to resume from is {run_dir / 'checkpoints' / 'step_000000040.pt'}" in line
    assert not [p for p in (run_dir / ".hydra").iterdir() if p.name.startswith(".")]  # no temporary file
    resume_after_freeing_space(run_dir, capsys, monkeypatch, 40)
