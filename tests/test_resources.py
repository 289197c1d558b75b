"""Tests of mtrl_fair.resources: what a run needs from the machine, said before it starts."""

from __future__ import annotations

from pathlib import Path

import torch
from agent_builders import fill, make_agent

from mtrl_fair.agents.checkpoint import save_checkpoint
from mtrl_fair.config import TrainConfig
from mtrl_fair.resources import checkpoint_bytes, replay_buffer_bytes, resource_warnings

GIB = 2**30


def test_replay_buffer_size_matches_the_stored_tensors() -> None:
    # MT10: 10 tasks × 100,000 transitions × (2 × 49 obs + 4 action + reward + termination) float32.
    assert replay_buffer_bytes(10, 100_000) == 4 * 10 * 100_000 * (2 * 49 + 4 + 2)


def test_no_warning_when_everything_fits(tmp_path: Path) -> None:
    cfg = TrainConfig()
    assert (
        resource_warnings(
            cfg, 10, torch.device("cpu"), tmp_path, free_device_bytes=64 * GIB, free_disk_bytes=64 * GIB
        )
        == []
    )


def test_warns_with_what_to_change_when_the_buffer_does_not_fit(tmp_path: Path) -> None:
    cfg = TrainConfig()  # MT50's buffer is about 3.4 GiB
    warnings = resource_warnings(
        cfg, 50, torch.device("cpu"), tmp_path, free_device_bytes=1 * GIB, free_disk_bytes=64 * GIB
    )
    assert len(warnings) == 1
    assert "replay buffer takes 3.4 GiB" in warnings[0]
    assert "agent.buffer_size_per_task" in warnings[0]
    suggested = int(warnings[0].split("(e.g. ")[1].split(")")[0])
    assert replay_buffer_bytes(50, suggested) <= 1 * GIB


def test_warns_when_checkpoints_would_fill_the_disk(tmp_path: Path) -> None:
    cfg = TrainConfig()
    warnings = resource_warnings(
        cfg, 10, torch.device("cpu"), tmp_path, free_device_bytes=64 * GIB, free_disk_bytes=GIB // 2
    )
    assert len(warnings) == 1
    assert "keep_checkpoints" in warnings[0]
    assert str(tmp_path) in warnings[0]


def test_checkpoint_size_is_that_of_a_checkpoint_with_a_full_buffer(tmp_path: Path) -> None:
    agent = fill(make_agent(buffer_size_per_task=256), transitions=256)
    agent.update(agent.replay_buffer.sample(8))  # the optimizers' state exists after an update
    path = tmp_path / "full.pt"
    save_checkpoint(agent.state_dict(include_replay_buffer=True), path)
    expected = checkpoint_bytes(agent)
    # Every tensor's bytes, plus the archive's own records (names, metadata, alignment).
    assert expected <= path.stat().st_size <= expected + 64 * 1024
