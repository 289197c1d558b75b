"""Tests of mtrl_fair.agents.spaces: the per-task spaces checked once, actions scaled, metadata kept."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from gymnasium.spaces import Box

from mtrl_fair.agents.spaces import TaskSpaces

NUM_TASKS, OBS_DIM = 3, 7
LOW = np.array([0.0, -2.0, 1.0, -0.5], np.float32)
HIGH = np.array([2.0, 2.0, 3.0, 0.25], np.float32)


def obs_space(dim: int = OBS_DIM) -> Box:
    return Box(-np.inf, np.inf, (dim,), np.float64)


def action_space() -> Box:
    return Box(LOW, HIGH, (len(LOW),), np.float32)


def make_spaces(task_names: list[str] | None = None) -> TaskSpaces:
    return TaskSpaces.from_spaces(NUM_TASKS, obs_space(), action_space(), task_names)


def fake_env(
    num_envs: int = NUM_TASKS, obs_dim: int = OBS_DIM, action_dim: int = len(LOW), **extra: Any
) -> Any:
    """What TaskSpaces reads of a vector env: the sub-env count and one sub-env's spaces."""
    return SimpleNamespace(
        num_envs=num_envs,
        single_observation_space=obs_space(obs_dim),
        single_action_space=Box(-1.0, 1.0, (action_dim,), np.float32),
        **extra,
    )


def assert_one_line(error: pytest.ExceptionInfo[ValueError]) -> None:
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# Checking the spaces
# --------------------------------------------------------------------------------------------------


def test_from_spaces_keeps_the_shapes_and_bounds() -> None:
    spaces = make_spaces()
    assert spaces.num_tasks == NUM_TASKS
    assert spaces.obs_dim == OBS_DIM
    assert spaces.action_dim == len(LOW)
    assert spaces.action_low.dtype == np.float32
    assert spaces.action_high.dtype == np.float32
    assert np.array_equal(spaces.action_low, LOW)
    assert np.array_equal(spaces.action_high, HIGH)
    assert spaces.observation_space.shape == (OBS_DIM,)
    assert np.array_equal(spaces.action_space.low, LOW)
    assert np.array_equal(spaces.action_space.high, HIGH)


def test_default_task_names() -> None:
    assert make_spaces().task_names == ("task-0", "task-1", "task-2")
    assert make_spaces(["reach", "push", "pick"]).task_names == ("reach", "push", "pick")


@pytest.mark.parametrize(
    ("observation", "action"),
    [
        (Box(-1.0, 1.0, (3, 4)), action_space()),  # an image-like observation
        (Box(-1.0, 1.0, ()), action_space()),  # a scalar observation
        (obs_space(), Box(-1.0, 1.0, (2, 2))),  # a matrix of actions
    ],
)
def test_non_flat_spaces_are_refused(observation: Box, action: Box) -> None:
    with pytest.raises(ValueError, match="flat Box spaces") as error:
        TaskSpaces.from_spaces(NUM_TASKS, observation, action)
    assert_one_line(error)
    assert str(observation.shape) in str(error.value)
    assert str(action.shape) in str(error.value)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (-np.inf, np.inf),
        (np.array([-1.0, -np.inf], np.float32), np.array([1.0, 1.0], np.float32)),  # one side, one dim
        (np.array([-1.0, -1.0], np.float32), np.array([1.0, np.inf], np.float32)),
    ],
)
def test_unbounded_actions_are_refused(low: Any, high: Any) -> None:
    with pytest.raises(ValueError, match="bounded action space") as error:
        TaskSpaces.from_spaces(NUM_TASKS, obs_space(), Box(low, high, (2,), np.float32))
    assert_one_line(error)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c", "d"], []])
def test_a_wrong_number_of_task_names_is_refused(names: list[str]) -> None:
    with pytest.raises(ValueError, match=f"got {len(names)} task names for {NUM_TASKS} tasks") as error:
        make_spaces(names)
    assert_one_line(error)


def test_from_env_reads_the_spaces_and_the_task_names() -> None:
    spaces = TaskSpaces.from_env(fake_env(obs_dim=5, action_dim=2))
    assert (spaces.num_tasks, spaces.obs_dim, spaces.action_dim) == (NUM_TASKS, 5, 2)
    assert spaces.task_names == ("task-0", "task-1", "task-2")
    named = fake_env(task_names=["x", "y", "z"])
    assert TaskSpaces.from_env(named).task_names == ("x", "y", "z")
    assert TaskSpaces.from_env(named, ["p", "q", "r"]).task_names == ("p", "q", "r")  # given names win


# --------------------------------------------------------------------------------------------------
# Scaling actions
# --------------------------------------------------------------------------------------------------


def test_scale_action_maps_the_squashed_range_to_the_bounds() -> None:
    spaces = make_spaces()
    dim = spaces.action_dim
    np.testing.assert_allclose(spaces.scale_action(-np.ones(dim, np.float32)), LOW, rtol=0, atol=1e-6)
    np.testing.assert_allclose(spaces.scale_action(np.ones(dim, np.float32)), HIGH, rtol=0, atol=1e-6)
    np.testing.assert_allclose(spaces.scale_action(np.zeros(dim, np.float32)), (LOW + HIGH) / 2, atol=1e-6)
    np.testing.assert_allclose(spaces.unscale_action(LOW), -np.ones(dim), atol=1e-6)
    np.testing.assert_allclose(spaces.unscale_action(HIGH), np.ones(dim), atol=1e-6)
    np.testing.assert_allclose(spaces.unscale_action((LOW + HIGH) / 2), np.zeros(dim), atol=1e-6)


def test_scale_and_unscale_are_inverse() -> None:
    spaces = make_spaces()
    rng = np.random.default_rng(0)
    squashed = rng.uniform(-1.0, 1.0, size=(NUM_TASKS, spaces.action_dim)).astype(np.float32)
    action = spaces.scale_action(squashed)
    assert action.shape == squashed.shape
    assert np.all(action >= LOW - 1e-6)
    assert np.all(action <= HIGH + 1e-6)
    np.testing.assert_allclose(spaces.unscale_action(action), squashed, rtol=0, atol=1e-5)
    env_action = rng.uniform(LOW, HIGH, size=(NUM_TASKS, spaces.action_dim)).astype(np.float32)
    np.testing.assert_allclose(spaces.scale_action(spaces.unscale_action(env_action)), env_action, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Checkpoint metadata and envs
# --------------------------------------------------------------------------------------------------


def test_metadata_round_trip_through_json() -> None:
    spaces = make_spaces(["reach", "push", "pick"])
    metadata = json.loads(json.dumps(spaces.metadata()))  # plain values only
    assert metadata == {
        "num_tasks": NUM_TASKS,
        "obs_dim": OBS_DIM,
        "action_low": LOW.tolist(),
        "action_high": HIGH.tolist(),
        "task_names": ["reach", "push", "pick"],
    }
    restored = TaskSpaces.from_metadata(metadata)
    assert restored.task_names == spaces.task_names
    assert restored.obs_dim == spaces.obs_dim
    assert restored.action_low.dtype == np.float32
    assert np.array_equal(restored.action_low, spaces.action_low)
    assert np.array_equal(restored.action_high, spaces.action_high)
    squashed = np.linspace(-1.0, 1.0, spaces.action_dim, dtype=np.float32)
    assert np.array_equal(restored.scale_action(squashed), spaces.scale_action(squashed))


def test_metadata_with_a_wrong_number_of_task_names_is_refused() -> None:
    metadata = make_spaces().metadata()
    metadata["task_names"] = ["only-one"]
    with pytest.raises(ValueError, match="got 1 task names for 3 tasks"):
        TaskSpaces.from_metadata(metadata)


def test_check_env_accepts_a_matching_env() -> None:
    make_spaces().check_env(fake_env())


@pytest.mark.parametrize(
    "env",
    [
        fake_env(num_envs=NUM_TASKS + 1),
        fake_env(obs_dim=OBS_DIM - 1),
        fake_env(action_dim=len(LOW) + 1),
    ],
    ids=["tasks", "observation", "action"],
)
def test_check_env_refuses_a_mismatched_env(env: Any) -> None:
    with pytest.raises(ValueError, match=r"the env has \(tasks, obs shape, action shape\)") as error:
        make_spaces().check_env(env)
    assert_one_line(error)
    assert str((NUM_TASKS, (OBS_DIM,), (len(LOW),))) in str(error.value)  # what the agent expected
