"""Tests of mtrl_fair.agents.numerics: a non-finite loss or gradient never reaches the weights.

The update is skipped whole and counted; too many skips in a row stop training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.spaces import Box

from mtrl_fair.agents import MTSAC, MTSACConfig, NonFiniteUpdateError

NUM_TASKS, OBS_DIM = 3, 8


def make_agent(combiner: str = "mean", **config: object) -> MTSAC:
    agent = MTSAC(
        num_tasks=NUM_TASKS,
        observation_space=Box(-np.inf, np.inf, (OBS_DIM,)),
        action_space=Box(-1.0, 1.0, (2,)),
        combiner=combiner,
        config=MTSACConfig(hidden_sizes=[16, 16], batch_size_per_task=8, buffer_size_per_task=64, **config),  # type: ignore[arg-type]
        device="cpu",
        seed=0,
        task_names=["a", "b", "c"],
    )
    rng = np.random.default_rng(0)
    for _ in range(32):
        obs = rng.standard_normal((NUM_TASKS, OBS_DIM))
        agent.replay_buffer.add(
            obs, rng.uniform(-1, 1, (NUM_TASKS, 2)), rng.standard_normal(NUM_TASKS), obs, np.zeros(NUM_TASKS)
        )
    return agent


def snapshot(agent: MTSAC) -> list[torch.Tensor]:
    tensors = [
        p.detach().clone() for p in (*agent.actor.parameters(), *agent.critic.parameters(), agent.log_alpha)
    ]
    for optimizer in (agent.actor_optimizer, agent.critic_optimizer, agent.temperature_optimizer):
        for state in optimizer.state.values():
            tensors += [value.detach().clone() for value in state.values() if isinstance(value, torch.Tensor)]
    return tensors


def poison(agent: MTSAC, task: int) -> None:
    agent.replay_buffer.storage["reward"][task, :] = float("nan")


@pytest.mark.parametrize("combiner", ["mean", "fairgrad", "pcgrad"])
def test_a_nan_reward_skips_the_update_and_leaves_every_weight_untouched(combiner: str) -> None:
    agent = make_agent(combiner)
    agent.update(agent.replay_buffer.sample(8))  # one good update first, so Adam has state
    before = snapshot(agent)
    poison(agent, task=1)
    stats = agent.update(agent.replay_buffer.sample(8))
    assert stats.finite is not None
    assert not bool(stats.finite)
    for old, new in zip(before, snapshot(agent), strict=True):
        assert torch.equal(old, new)
    assert agent.skipped_updates == 1
    agent.check_numerics()  # one skip is below the limit: no error


def test_good_updates_are_not_skipped() -> None:
    agent = make_agent("fairgrad")
    before = snapshot(agent)
    stats = agent.update(agent.replay_buffer.sample(8))
    assert stats.finite is not None
    assert bool(stats.finite)
    assert agent.skipped_updates == 0
    assert any(not torch.equal(old, new) for old, new in zip(before, snapshot(agent), strict=True))


def test_too_many_consecutive_skips_stop_with_the_task_and_the_iteration() -> None:
    agent = make_agent("fairgrad", max_consecutive_skips=3)
    poison(agent, task=2)
    agent.iteration = 41
    for _ in range(2):
        agent.update(agent.replay_buffer.sample(8))
    agent.check_numerics()  # 2 < 3
    agent.update(agent.replay_buffer.sample(8))
    with pytest.raises(NonFiniteUpdateError, match=r"3 consecutive updates.*task\(s\) c.*iteration 41"):
        agent.check_numerics()


def test_a_good_update_resets_the_run_of_skips() -> None:
    agent = make_agent("mean", max_consecutive_skips=2)
    rewards = agent.replay_buffer.storage["reward"].clone()
    poison(agent, task=0)
    agent.update(agent.replay_buffer.sample(8))
    agent.replay_buffer.storage["reward"].copy_(rewards)
    agent.update(agent.replay_buffer.sample(8))
    poison(agent, task=0)
    agent.update(agent.replay_buffer.sample(8))
    agent.check_numerics()  # never two in a row
    assert agent.skipped_updates == 2


def test_max_consecutive_skips_is_validated() -> None:
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        MTSACConfig(max_consecutive_skips=0).validate()
