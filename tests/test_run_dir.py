"""The run directory's files: metrics cut back without rewriting, appends and replacements that leave
no partial file, and readers that cope with a run being written."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from mtrl_fair.agents.checkpoint import save_checkpoint
from mtrl_fair.run_dir import (
    append_line,
    latest_checkpoint,
    read_json,
    truncate_metrics,
    write_text_atomically,
)


def record(step: int) -> str:
    return json.dumps({"step": step, "value": step / 10}) + "\n"


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_truncating_metrics_cuts_the_file_back_in_place(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(record(s) for s in (10, 20, 30, 40)))
    inode = path.stat().st_ino
    truncate_metrics(path, 20)
    assert steps_in(path) == [10, 20]
    assert path.stat().st_ino == inode  # cut back, not rewritten: nothing to write on a full disk
    truncate_metrics(path, 20)
    assert steps_in(path) == [10, 20]


@pytest.mark.parametrize(
    "tail",
    [
        '{"step": 30, "val',  # a kill in the middle of a line
        '{"step": 30}',  # a whole object whose newline was not written
        "\x00\x00\x00",  # zeros left by a crash of the machine
    ],
)
def test_a_line_cut_short_is_dropped(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(record(10) + record(20) + tail)
    truncate_metrics(path, 100)
    assert path.read_text() == record(10) + record(20)


def test_metrics_out_of_order_are_rewritten_atomically(tmp_path: Path) -> None:
    # What two processes writing one run at once left behind before runs were locked.
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(record(s) for s in (10, 20, 30, 20, 30, 40)))
    truncate_metrics(path, 20)
    assert steps_in(path) == [10, 20, 20]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left


def test_an_append_that_fails_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    append_line(path, record(10))
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        append_line(path, record(20))
    monkeypatch.undo()
    assert path.read_text() == record(10)
    append_line(path, record(20))
    assert steps_in(path) == [10, 20]


def test_a_replacement_that_fails_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    write_text_atomically(path, "seed: 0\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomically(path, "seed: 1\n")
    assert path.read_text() == "seed: 0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_readers_cope_with_files_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "final_eval.json").write_text('{"step": 10, "per_t')  # cut short
    assert read_json(tmp_path / "final_eval.json") == {}
    assert read_json(tmp_path / "absent.json") == {}

    folder = tmp_path / "checkpoints"
    for step in (10, 20):
        save_checkpoint({"format": "test", "step": torch.tensor(step)}, folder / f"step_{step:09d}.pt")
    # A checkpoint that the writer removes (it keeps the newest few) while it is being read.
    newest = folder / "step_000000020.pt"
    real_read_bytes = Path.read_bytes

    def removed_meanwhile(self: Path) -> bytes:
        if self == newest:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", removed_meanwhile)
    found = latest_checkpoint(tmp_path)
    assert found is not None
    assert found[0].name == "step_000000010.pt"
