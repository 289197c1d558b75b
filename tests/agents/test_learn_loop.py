"""``MTSAC.learn`` on a tiny gymnasium vector env: the sequential loop and the overlapped one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from point_tasks import K, make_env, params

from mtrl_fair.agents import MTSAC, MTSACConfig


def make_agent(**overrides: Any) -> MTSAC:
    config = MTSACConfig(
        hidden_sizes=[16, 16], batch_size_per_task=4, buffer_size_per_task=100, warmup_steps=5, **overrides
    )
    return MTSAC(make_env(), combiner="fairgrad", config=config, device="cpu", seed=3)


@pytest.mark.parametrize("overlap", [False, True])
def test_learn_counts_iterations_updates_and_transitions(overlap: bool) -> None:
    agent = make_agent(overlap_env_steps=overlap)
    agent.learn(20 * K)
    assert agent.iteration == 20
    assert agent.num_timesteps == 20 * K
    assert agent.updates == 20 - 5  # one per iteration after the warm-up
    assert agent.replay_buffer.size == 20
    assert all(torch.isfinite(p).all() for p in params(agent))


def test_overlapped_envs_step_in_a_background_thread_after_warm_up() -> None:
    agent = make_agent(overlap_env_steps=True)
    agent.learn(12 * K)
    stepped_by = set().union(*(env.stepped_by for env in agent.env.envs))
    assert "MainThread" in stepped_by  # the warm-up, with no update to overlap
    assert any(name != "MainThread" for name in stepped_by)
    sequential = make_agent()
    sequential.learn(12 * K)
    assert set().union(*(env.stepped_by for env in sequential.env.envs)) == {"MainThread"}


@pytest.mark.parametrize("overlap", [False, True])
def test_the_same_seed_trains_the_same_agent(overlap: bool) -> None:
    # The warm-up actions included: the agent seeds its env's action space.
    runs = []
    for _ in range(2):
        agent = make_agent(overlap_env_steps=overlap)  # seeds torch's generator, so one after the other
        agent.learn(15 * K)
        runs.append(params(agent))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_an_env_error_in_the_background_thread_reaches_the_caller() -> None:
    agent = make_agent(overlap_env_steps=True)
    agent.learn(6 * K)

    def broken_step(action: np.ndarray) -> Any:
        raise RuntimeError("simulator failed")

    agent.env.step = broken_step  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="simulator failed"):
        agent.learn(K)
