"""Tests of mtrl_fair.agents.config: every value out of range is one ValueError line naming its key.

Each bad value is refused twice: by ``MTSACConfig.validate`` and by the ``MTSAC`` constructor.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from agent_builders import make_agent, small_config

from mtrl_fair.agents.config import LOSS_GROUPS, MTSACConfig


def test_temperature_in_combine_needs_a_shared_temperature() -> None:
    with pytest.raises(ValueError, match="shared_temperature"):
        make_agent("fairgrad", combine=["critic", "actor", "temperature"])
    with pytest.raises(ValueError, match="shared_temperature"):
        small_config(combine=["temperature"]).validate()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"gamma": 1.0}, "agent.gamma"),
        ({"gamma": -0.1}, "agent.gamma"),
        ({"tau": 0.0}, "agent.tau"),
        ({"tau": 1.5}, "agent.tau"),
        ({"combine": ["critic", "policy"]}, "agent.combine"),
        ({"combine": ["critic", "critic"]}, "agent.combine"),
        ({"chunk_size": 0}, "agent.chunk_size"),
        ({"hidden_sizes": []}, "agent.hidden_sizes"),
        ({"hidden_sizes": [32, 0]}, "agent.hidden_sizes"),
        ({"actor_lr": 0.0}, "agent.actor_lr"),
        ({"critic_lr": math.nan}, "agent.critic_lr"),
        ({"initial_temperature": -1.0}, "agent.initial_temperature"),
        ({"batch_size_per_task": 0}, "agent.batch_size_per_task"),
        ({"buffer_size_per_task": 0}, "agent.buffer_size_per_task"),
        ({"warmup_steps": -1}, "agent.warmup_steps"),
        ({"target_entropy": math.inf}, "agent.target_entropy"),
    ],
)
def test_config_validation_names_the_key(overrides: dict[str, Any], key: str) -> None:
    config = small_config(**overrides)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as info:
        config.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_agent(**overrides)


def test_valid_configs_pass() -> None:
    MTSACConfig().validate()
    small_config(gamma=0.0, tau=1.0, chunk_size=1, target_entropy=-2.0, warmup_steps=0).validate()
    small_config(shared_temperature=True, combine=list(LOSS_GROUPS)).validate()
