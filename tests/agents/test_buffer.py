"""Tests of mtrl_fair.agents.buffer: the per-task ring buffer on the training device."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_fair.agents.buffer import MultiTaskReplayBuffer, TaskBatch

K, OBS_DIM, ACTION_DIM = 3, 5, 2


def transition(step: int, num_tasks: int = K) -> dict[str, np.ndarray]:
    """One transition per task whose every value encodes (task, step): 1000·task + step."""
    code = 1000.0 * np.arange(num_tasks)[:, None] + step  # (K, 1)
    return {
        "obs": np.repeat(code, OBS_DIM, axis=1),  # float64, as Meta-World returns them
        "action": np.repeat(code + 0.25, ACTION_DIM, axis=1).astype(np.float32),
        "reward": code[:, 0] + 0.5,
        "next_obs": np.repeat(code + 0.75, OBS_DIM, axis=1),
        "terminated": (np.arange(num_tasks) + step) % 2 == 0,  # booleans, as envs return them
    }


def filled(capacity: int, steps: int, num_tasks: int = K) -> MultiTaskReplayBuffer:
    buffer = MultiTaskReplayBuffer(num_tasks, capacity, OBS_DIM, ACTION_DIM)
    for step in range(steps):
        buffer.add(**transition(step, num_tasks))
    return buffer


def decode(batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The (task, step) codes of the sampled observations, (K, B) each."""
    code = batch.obs[..., 0]
    return torch.div(code, 1000, rounding_mode="floor"), torch.remainder(code, 1000)


def test_add_and_sample_shapes() -> None:
    buffer = filled(capacity=10, steps=4)
    assert len(buffer) == buffer.size == 4
    batch = buffer.sample(7)
    assert isinstance(batch, TaskBatch)
    assert batch.obs.shape == (K, 7, OBS_DIM)
    assert batch.action.shape == (K, 7, ACTION_DIM)
    assert batch.reward.shape == (K, 7)
    assert batch.next_obs.shape == (K, 7, OBS_DIM)
    assert batch.terminated.shape == (K, 7)
    for field in batch:
        assert field.dtype == torch.float32
        assert field.device.type == "cpu"


def test_samples_of_each_task_come_from_that_task_only() -> None:
    buffer = filled(capacity=50, steps=20)
    batch = buffer.sample(200, generator=torch.Generator().manual_seed(0))
    task, step = decode(batch)
    assert torch.equal(task, torch.arange(K, dtype=task.dtype)[:, None].expand(K, 200))
    assert step.min() >= 0
    assert step.max() <= 19
    # All fields of a sample belong to the same stored transition.
    code = batch.obs[..., 0]
    assert torch.equal(batch.obs, code[..., None].expand_as(batch.obs))
    assert torch.equal(batch.action, (code + 0.25)[..., None].expand_as(batch.action))
    assert torch.equal(batch.reward, code + 0.5)
    assert torch.equal(batch.next_obs, (code + 0.75)[..., None].expand_as(batch.next_obs))
    assert torch.equal(batch.terminated, ((task + step) % 2 == 0).float())
    # Sampling is uniform over the stored steps: with 200 draws from 20 every step shows up.
    for k in range(K):
        assert step[k].unique().numel() == 20


def test_sampling_with_a_generator_is_reproducible() -> None:
    buffer = filled(capacity=30, steps=30)
    first = buffer.sample(16, generator=torch.Generator().manual_seed(5))
    second = buffer.sample(16, generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_add_accepts_tensors() -> None:
    buffer = MultiTaskReplayBuffer(K, 4, OBS_DIM, ACTION_DIM)
    values = {
        key: torch.as_tensor(np.asarray(value, dtype=np.float32)) for key, value in transition(3).items()
    }
    buffer.add(**values)
    assert torch.equal(buffer.storage["obs"][:, 0], values["obs"])
    assert torch.equal(buffer.storage["terminated"][:, 0], values["terminated"])


def test_ring_wraps_around() -> None:
    capacity = 4
    buffer = MultiTaskReplayBuffer(K, capacity, OBS_DIM, ACTION_DIM)
    for step in range(capacity - 1):
        buffer.add(**transition(step))
    assert (buffer.size, buffer.position) == (3, 3)
    buffer.add(**transition(3))
    assert (buffer.size, buffer.position) == (4, 0)
    for step in range(4, 10):
        buffer.add(**transition(step))
    # 10 adds into 4 slots: the size caps at the capacity, the position has wrapped to 10 mod 4.
    assert (buffer.size, buffer.position) == (capacity, 2)
    assert len(buffer) == capacity
    # The slots hold the last four steps, the oldest overwritten in ring order.
    stored_steps = torch.remainder(buffer.storage["obs"][0, :, 0], 1000)
    assert stored_steps.tolist() == [8.0, 9.0, 6.0, 7.0]
    _, step = decode(buffer.sample(300, generator=torch.Generator().manual_seed(1)))
    assert set(step.unique().tolist()) == {6.0, 7.0, 8.0, 9.0}


def test_sampling_an_empty_buffer_raises() -> None:
    buffer = MultiTaskReplayBuffer(K, 8, OBS_DIM, ACTION_DIM)
    with pytest.raises(RuntimeError, match="empty"):
        buffer.sample(4)


@pytest.mark.parametrize(("num_tasks", "capacity"), [(0, 5), (2, 0)])
def test_invalid_sizes_are_refused(num_tasks: int, capacity: int) -> None:
    with pytest.raises(ValueError, match=r"num_tasks|capacity_per_task"):
        MultiTaskReplayBuffer(num_tasks, capacity, OBS_DIM, ACTION_DIM)


def assert_same_contents(a: MultiTaskReplayBuffer, b: MultiTaskReplayBuffer) -> None:
    assert (a.size, a.position) == (b.size, b.position)
    for key in a.storage:
        assert torch.equal(a.storage[key][:, : a.size], b.storage[key][:, : b.size]), key


def test_state_dict_round_trip() -> None:
    source = filled(capacity=6, steps=9)  # wrapped
    state = source.state_dict()
    assert state["size"] == 6
    assert state["position"] == 3
    target = MultiTaskReplayBuffer(K, 6, OBS_DIM, ACTION_DIM)
    target.load_state_dict(state)
    assert_same_contents(source, target)
    # The restored buffer continues the ring where the source stopped.
    source.add(**transition(100))
    target.add(**transition(100))
    assert_same_contents(source, target)


def test_state_dict_round_trip_through_torch_save_weights_only(tmp_path: Path) -> None:
    source = filled(capacity=20, steps=7)
    path = tmp_path / "buffer.pt"
    torch.save(source.state_dict(), path)
    state = torch.load(path, weights_only=True)
    target = MultiTaskReplayBuffer(K, 20, OBS_DIM, ACTION_DIM)
    target.load_state_dict(state)
    assert_same_contents(source, target)
    batch = target.sample(32, generator=torch.Generator().manual_seed(0))
    task, step = decode(batch)
    assert torch.equal(task, torch.arange(K, dtype=task.dtype)[:, None].expand(K, 32))
    assert step.max() <= 6


def test_state_dict_holds_only_the_filled_part() -> None:
    capacity = 200_000  # 2 tasks × 200k × 24 floats ≈ 38 MB of (untouched) storage
    buffer = MultiTaskReplayBuffer(2, capacity, 10, 2)
    for step in range(5):
        buffer.add(np.full((2, 10), step), np.zeros((2, 2)), np.zeros(2), np.full((2, 10), step), np.zeros(2))
    state = buffer.state_dict()
    for key in buffer.storage:
        assert state[key].shape[:2] == (2, 5)
        assert state[key].untyped_storage().nbytes() == state[key].numel() * 4, key
    serialized = io.BytesIO()
    torch.save(state, serialized)
    assert serialized.getbuffer().nbytes < 64 * 1024, "the empty part of the buffer was saved"


def test_loading_into_a_smaller_buffer_errors_clearly() -> None:
    state = filled(capacity=10, steps=8).state_dict()
    small = MultiTaskReplayBuffer(K, 5, OBS_DIM, ACTION_DIM)
    with pytest.raises(ValueError, match=r"holds 8 transitions per task.*capacity_per_task=5"):
        small.load_state_dict(state)
    assert small.size == 0  # nothing half-loaded


def test_loading_into_a_larger_buffer_works() -> None:
    state = filled(capacity=5, steps=5).state_dict()
    large = MultiTaskReplayBuffer(K, 50, OBS_DIM, ACTION_DIM)
    large.load_state_dict(state)
    assert large.size == 5
    assert large.position == 0  # the saved position (5 mod 5) stays within the new capacity
    large.add(**transition(77))
    assert large.size == 6


def test_loading_a_mismatched_shape_errors_clearly() -> None:
    state = filled(capacity=10, steps=3).state_dict()
    other = MultiTaskReplayBuffer(K, 10, OBS_DIM + 1, ACTION_DIM)
    with pytest.raises(ValueError, match="'obs' has shape"):
        other.load_state_dict(state)
