"""Tests of mtrl_fair.envs.benchmarks: task lists, task checks, the vector env, final observations."""

from __future__ import annotations

import numpy as np
import pytest

from mtrl_fair.envs import (
    BENCHMARKS,
    benchmark_tasks,
    final_observations,
    make_vector_env,
    resolve_tasks,
    resolve_vector_strategy,
    vector_env_task_names,
)

OBS_SIZE = 39  # Meta-World's observation, before the one-hot task id
PAIR = ["drawer-close-v3", "reach-v3"]  # deliberately not in Meta-World's order
SHORT_EPISODE = 5


@pytest.fixture(scope="module")
def pair_env():
    """A 2-task env with short episodes, and its first reset observation (before any test steps it)."""
    env = make_vector_env("MT10", PAIR, seed=0, max_episode_steps=SHORT_EPISODE)
    first_obs, _ = env.reset()
    yield env, first_obs
    env.close()


def first_reset(tasks: list[str], **kwargs) -> np.ndarray:
    env = make_vector_env("MT10", tasks, **kwargs)
    try:
        return env.reset()[0]
    finally:
        env.close()


def test_task_lists_follow_metaworld():
    mt10, mt50 = benchmark_tasks("MT10"), benchmark_tasks("MT50")
    assert BENCHMARKS == ("MT10", "MT50")
    assert len(mt10) == 10
    assert len(mt50) == len(set(mt50)) == 50
    assert all(task.endswith("-v3") for task in mt50)
    assert set(mt10) <= set(mt50)
    assert mt10[:2] == ["reach-v3", "push-v3"]  # Meta-World's MT10 order, which sets the one-hot ids
    assert benchmark_tasks("mt10") == mt10


def test_resolve_tasks_keeps_the_order_given():
    assert resolve_tasks("MT10", None) == benchmark_tasks("MT10")
    assert resolve_tasks("mt50", ("reach-v3", "assembly-v3")) == ["reach-v3", "assembly-v3"]


@pytest.mark.parametrize(
    ("benchmark", "tasks", "message"),
    [
        ("MT11", None, "unknown benchmark 'MT11'; allowed: MT10, MT50"),
        ("MT10", ["reach-v9"], "unknown task 'reach-v9' for MT10; allowed: reach-v3, push-v3, "),
        ("MT10", ["assembly-v3"], "unknown task 'assembly-v3' for MT10"),
        ("MT10", ["reach-v3", "push-v3", "reach-v3"], "task 'reach-v3' appears twice"),
        ("MT10", [], "tasks is empty; name at least one MT10 task: reach-v3, "),
        ("MT10", "reach-v3", "tasks must be a list of task names, got the single string 'reach-v3'"),
    ],
)
def test_resolve_tasks_errors_say_what_is_wrong_and_allowed(benchmark, tasks, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as error:
        resolve_tasks(benchmark, tasks)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vector_strategy": "threads"}, "unknown vector_strategy 'threads'; allowed: auto, sync, async"),
        ({"max_episode_steps": 0}, "max_episode_steps must be an integer from 1 to 500"),
        ({"max_episode_steps": 501}, "max_episode_steps must be an integer from 1 to 500"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"benchmark": "ML10"}, "unknown benchmark 'ML10'"),
    ],
)
def test_make_vector_env_rejects_bad_arguments_before_building(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_vector_env(**{"tasks": ["reach-v3"], **kwargs})


def test_subset_env_spaces_one_hot_and_task_names(pair_env):
    env, first_obs = pair_env
    assert first_obs.shape == (2, OBS_SIZE + 2)
    assert first_obs.dtype == np.float32
    np.testing.assert_array_equal(first_obs[:, OBS_SIZE:], np.eye(2))  # row i is task i as given
    assert env.action_space.shape == (2, 4)
    assert vector_env_task_names(env) == PAIR
    assert env.get_attr("terminate_on_success") == (False, False)  # training never ends on success


def test_seed_zero_is_seeded_and_deterministic(pair_env):
    # Meta-World's custom entry point would treat seed 0 as "unseeded" (fresh goals every build).
    _, first_obs = pair_env
    np.testing.assert_array_equal(first_reset(PAIR, seed=0), first_obs)


def test_different_seeds_give_different_goals(pair_env):
    _, seed0_obs = pair_env
    seed1_obs = first_reset(PAIR, seed=1)
    assert seed1_obs.shape == seed0_obs.shape
    assert not np.array_equal(seed1_obs, seed0_obs)


def test_truncation_and_final_observations(pair_env):
    env, _ = pair_env
    obs, _ = env.reset()
    zero_actions = np.zeros(env.action_space.shape, dtype=np.float32)
    for _ in range(SHORT_EPISODE - 1):
        next_obs, _, terminated, truncated, infos = env.step(zero_actions)
        assert not (terminated | truncated).any()
        stored = final_observations(next_obs, terminated | truncated, infos)
        np.testing.assert_array_equal(stored, next_obs)
        assert stored is not next_obs
        obs = next_obs

    next_obs, _, terminated, truncated, infos = env.step(zero_actions)
    assert truncated.all()  # the time limit ends the episode: bootstrap through it
    assert not terminated.any()  # nothing terminates in Meta-World training
    assert infos["_final_obs"].all()
    stored = final_observations(next_obs, terminated | truncated, infos)
    assert stored.dtype == next_obs.dtype == np.float32
    for row in range(2):  # final_obs rows are Meta-World's float64 values, not yet cast by the vector env
        np.testing.assert_array_equal(stored[row], infos["final_obs"][row].astype(np.float32))
    # Meta-World's observation holds the previous frame in [18:36]: the stored rows continue the
    # episode, while next_obs is a fresh reset (whose previous frame is a copy of its current one).
    np.testing.assert_allclose(stored[:, 18:36], obs[:, 0:18], atol=1e-6)
    np.testing.assert_array_equal(next_obs[:, 18:36], next_obs[:, 0:18])
    assert not np.array_equal(stored, next_obs)
    np.testing.assert_array_equal(stored[:, OBS_SIZE:], np.eye(2))


def test_final_observations_needs_final_obs_when_an_episode_ended():
    next_obs = np.zeros((2, OBS_SIZE + 2), dtype=np.float32)
    with pytest.raises(ValueError, match="infos has no 'final_obs'"):
        final_observations(next_obs, np.array([True, False]), {})
    with pytest.raises(ValueError, match=r"dones must have shape \(2,\)"):
        final_observations(next_obs, np.array([True]), {})


def test_async_strategy_matches_sync(pair_env):
    _, sync_obs = pair_env
    np.testing.assert_array_equal(first_reset(PAIR, seed=0, vector_strategy="async"), sync_obs)


@pytest.mark.slow
def test_full_mt10_env():
    env = make_vector_env("mt10", seed=0)
    try:
        obs, _ = env.reset()
        assert obs.shape == (10, OBS_SIZE + 10)
        np.testing.assert_array_equal(obs[:, OBS_SIZE:], np.eye(10))
        assert env.action_space.shape == (10, 4)
        assert vector_env_task_names(env) == benchmark_tasks("MT10")
    finally:
        env.close()


@pytest.mark.parametrize(
    ("strategy", "gpu", "cores", "expected"),
    [
        ("auto", True, 16, ("async", "a GPU update and 16 CPU cores")),
        ("auto", True, 4, ("async", "a GPU update and 4 CPU cores")),
        ("auto", True, 3, ("sync", "only 3 CPU cores (async envs need at least 4)")),
        ("auto", False, 16, ("sync", "the update runs on the CPU")),
        ("sync", True, 16, ("sync", "as asked")),
        ("async", False, 1, ("async", "as asked")),
    ],
)
def test_auto_vector_strategy(strategy, gpu, cores, expected):
    assert resolve_vector_strategy(strategy, gpu=gpu, cores=cores) == expected


def test_auto_vector_strategy_reads_the_machine(monkeypatch):
    import mtrl_fair.envs.benchmarks as benchmarks

    monkeypatch.setattr(benchmarks, "gpu_driver_present", lambda: True)
    monkeypatch.setattr(benchmarks, "available_cores", lambda: 8)
    assert resolve_vector_strategy("auto") == ("async", "a GPU update and 8 CPU cores")
    monkeypatch.setattr(benchmarks, "gpu_driver_present", lambda: False)
    assert resolve_vector_strategy("auto")[0] == "sync"


def test_hardware_probes_answer_without_torch():
    from mtrl_fair.envs.hardware import available_cores, gpu_driver_present

    assert available_cores() >= 1
    assert isinstance(gpu_driver_present(), bool)
