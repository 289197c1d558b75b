"""A restored agent records its update's CUDA graph again, and the replays train the restored state.

``load_state_dict`` gives the optimisers new state tensors, and a graph replays on the tensors it
recorded: a recording kept across a restore would step the old moments while the new ones, the
ones saved in the next checkpoint, stood still. The CPU test checks that a restore drops the
recording; the GPU test trains after a restore and counts the optimisers' steps.
"""

from __future__ import annotations

import copy

import torch
from markers import requires_cuda
from point_tasks import K, make_env

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.agents.cuda_graph import GRAPH_WARMUP_UPDATES, UpdateGraph


def make_agent(device: str) -> MTSAC:
    config = MTSACConfig(
        hidden_sizes=[32, 32],
        batch_size_per_task=8,
        buffer_size_per_task=200,
        warmup_steps=5,
        cuda_graph=True,
    )
    return MTSAC(make_env(), combiner="fairgrad", config=config, device=device, seed=3)


def optimizer_steps(agent: MTSAC) -> set[int]:
    optimizers = (agent.actor_optimizer, agent.critic_optimizer, agent.temperature_optimizer)
    return {int(state["step"]) for optimizer in optimizers for state in optimizer.state.values()}


def test_a_restore_drops_the_recorded_update() -> None:
    agent = make_agent("cpu")
    agent._graph = UpdateGraph(agent.device)  # what the first graphed update leaves on a GPU
    agent.load_state_dict(agent.state_dict(include_replay_buffer=True))
    assert agent._graph is None


@requires_cuda
def test_after_a_restore_the_update_is_captured_again_and_trains_the_restored_state() -> None:
    agent = make_agent("cuda")
    agent.learn(15 * K)  # 10 updates: the warm-ups, the capture, replays
    recorded = agent._graph
    assert recorded is not None
    assert recorded.graph is not None, recorded.failure
    state = copy.deepcopy(agent.state_dict(include_replay_buffer=True))
    agent.load_state_dict(state)
    assert agent._graph is None
    assert optimizer_steps(agent) == {10}
    more = GRAPH_WARMUP_UPDATES + 5
    agent.learn(more * K)
    again = agent._graph
    assert again is not None
    assert again is not recorded
    assert again.graph is not None, again.failure
    assert optimizer_steps(agent) == {10 + more}  # every update stepped the restored moments
    assert agent.updates == 10 + more
    for saved, now in zip(state["critic"].values(), agent.critic.state_dict().values(), strict=True):
        assert not torch.equal(saved.to(now.device), now)  # the restored weights trained
