"""The update replayed from a CUDA graph (``agent.cuda_graph``): the same update, without launches.

The CPU test checks the switch is inert there; the others need CUDA and skip without it.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from markers import requires_cuda
from point_tasks import K, make_env, params

from mtrl_fair.agents import MTSAC, MTSACConfig


def make_agent(device: str, combiner: str = "fairgrad", **overrides: object) -> MTSAC:
    config = MTSACConfig(
        hidden_sizes=[32, 32], batch_size_per_task=8, buffer_size_per_task=200, warmup_steps=5, **overrides
    )
    return MTSAC(make_env(), combiner=combiner, config=config, device=device, seed=5)


def test_the_switch_is_inert_on_the_cpu() -> None:
    runs = []
    for graph in (False, True):
        agent = make_agent("cpu", cuda_graph=graph)
        assert agent._graph is None
        agent.learn(15 * K)
        assert agent._graph is None
        assert agent.updates == 10
        runs.append(params(agent))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def captured_agent(combiner: str = "fairgrad") -> MTSAC:
    agent = make_agent("cuda", combiner, cuda_graph=True)
    agent.learn(15 * K)  # 10 updates: 3 warm-up, then the capture and replays
    return agent


@requires_cuda
@pytest.mark.parametrize("combiner", ["mean", "fairgrad", "pcgrad"])
def test_a_replay_is_the_eager_update(combiner: str) -> None:
    graphed = captured_agent(combiner)
    assert graphed._graph is not None
    assert graphed._graph.graph is not None, graphed._graph.failure
    state = copy.deepcopy(graphed.state_dict(include_replay_buffer=True))
    batch = graphed.replay_buffer.sample(8)
    eager = make_agent("cuda", combiner)
    eager.load_state_dict(copy.deepcopy(state))
    # Same random numbers for both: a replay draws from the generator's state at replay time.
    for combiner_graphed, combiner_eager in zip(
        graphed.combiners.values(), eager.combiners.values(), strict=True
    ):
        if hasattr(combiner_graphed, "generator"):
            combiner_eager.generator(eager.device).set_state(
                combiner_graphed.generator(graphed.device).get_state()
            )
    torch.cuda.manual_seed(123)
    graphed._update.iteration.fill_(graphed.iteration)
    replayed = graphed._graphed_update(batch)
    torch.cuda.manual_seed(123)
    expected = eager.update(batch)
    torch.testing.assert_close(replayed.critic_loss, expected.critic_loss)
    torch.testing.assert_close(replayed.actor_loss, expected.actor_loss)
    for a, b in zip(params(graphed), params(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@requires_cuda
def test_replays_do_not_synchronise_with_the_host() -> None:
    agent = captured_agent()
    batch = agent.replay_buffer.sample(8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            agent._graphed_update(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p).all() for p in params(agent))


@requires_cuda
def test_an_uncapturable_combiner_falls_back_to_the_eager_update() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent = captured_agent("torchjd:UPGrad")  # TorchJD solves on the host: it cannot be captured
    assert agent._graph is not None
    assert agent._graph.failed
    assert any("could not be captured" in str(w.message) for w in caught)
    assert agent.updates == 10
    assert all(torch.isfinite(p).all() for p in params(agent))
