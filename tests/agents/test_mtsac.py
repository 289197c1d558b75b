"""Tests of mtrl_fair.agents.mtsac: the update, its combiners, predict, save/load, on a GPU.

Agents are built without an environment by :mod:`agent_builders` (``num_tasks``,
``observation_space``, ``action_space``), their replay buffers filled with random transitions whose
observations end with the one-hot task id, as Meta-World's do. The hyperparameters' validation is
tested in ``test_config.py``, ``resolve_device`` in ``test_device.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from agent_builders import (
    ACTION_DIM,
    BATCH,
    OBS_DIM,
    STATE_DIM,
    K,
    fill,
    make_agent,
    one_hot_obs,
    small_config,
)
from combiner_checks import no_host_sync
from gymnasium.spaces import Box
from markers import requires_cuda

from mtrl_fair.agents import LOSS_GROUPS, MTSAC, TaskBatch, UpdateStats
from mtrl_fair.combiners import available, make
from mtrl_fair.combiners.famo import FAMO


def fixed_batch(agent: MTSAC, seed: int = 0) -> TaskBatch:
    return agent.replay_buffer.sample(BATCH, generator=torch.Generator().manual_seed(seed))


def parameters(agent: MTSAC) -> dict[str, torch.Tensor]:
    """Every learned tensor of the agent, by name."""
    named = {f"actor.{n}": p for n, p in agent.actor.named_parameters()}
    named |= {f"critic.{n}": p for n, p in agent.critic.named_parameters()}
    named |= {f"critic_target.{n}": p for n, p in agent.critic_target.named_parameters()}
    named["log_alpha"] = agent.log_alpha
    return {name: tensor.detach().clone() for name, tensor in named.items()}


def assert_all_finite(stats: UpdateStats, agent: MTSAC) -> None:
    for name in ("critic_loss", "actor_loss", "temperature", "critic_weights", "actor_weights"):
        value = getattr(stats, name)
        assert value.shape == (agent.num_tasks,), name
        assert torch.isfinite(value).all(), name
    for name, tensor in parameters(agent).items():
        assert torch.isfinite(tensor).all(), name


# --------------------------------------------------------------------------------------------------
# The update
# --------------------------------------------------------------------------------------------------


def test_plain_path_equals_combined_path_for_mean() -> None:
    """mean without diagnostics: one backward of the mean loss; with: vmap'd per-task gradients + Mean."""
    plain, combined = fill(make_agent("mean")), fill(make_agent("mean"))
    for a, b in zip(parameters(plain).values(), parameters(combined).values(), strict=True):
        assert torch.equal(a, b)
    batch = fixed_batch(plain)

    torch.manual_seed(11)
    plain_stats = plain.update(batch)
    torch.manual_seed(11)
    combined_stats = combined.update(batch, diagnostics=True)

    assert plain_stats.critic_grad_norms is None
    assert combined_stats.critic_grad_norms is not None
    torch.testing.assert_close(plain_stats.critic_loss, combined_stats.critic_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain_stats.actor_loss, combined_stats.actor_loss, rtol=1e-5, atol=1e-6)
    before = parameters(fill(make_agent("mean")))
    after_plain, after_combined = parameters(plain), parameters(combined)
    for name in after_plain:
        torch.testing.assert_close(after_plain[name], after_combined[name], rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(after_plain[name], before[name]), f"{name} did not move"


def test_plain_and_diagnostic_gradients_agree_before_the_step() -> None:
    """The same comparison on the gradients themselves (Adam's first step hides their scale)."""
    plain, combined = fill(make_agent("mean")), fill(make_agent("mean"))
    batch = fixed_batch(plain)
    grads = []
    for agent, diagnostics in ((plain, False), (combined, True)):
        torch.manual_seed(3)
        agent.critic_optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
        agent.actor_optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
        agent.update(batch, diagnostics=diagnostics)
        grads.append(
            [p.grad.clone() for p in [*agent.critic.parameters(), *agent.actor.parameters(), agent.log_alpha]]
        )
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


COMBINERS = [*available(), "torchjd:UPGrad"]


@pytest.mark.parametrize("name", COMBINERS)
def test_every_combiner_runs_updates(name: str) -> None:
    agent = fill(make_agent(name))
    torch.manual_seed(0)
    for i in range(3):
        stats = agent.update(agent.replay_buffer.sample(BATCH), diagnostics=(i == 1))
        assert_all_finite(stats, agent)
        if i == 1:
            for norms, cosine in (
                (stats.critic_grad_norms, stats.critic_cosine),
                (stats.actor_grad_norms, stats.actor_cosine),
            ):
                assert norms is not None
                assert cosine is not None
                assert norms.shape == (K,)
                assert torch.isfinite(norms).all()
                assert (norms >= 0).all()
                assert cosine.shape == ()
                assert -1.0 - 1e-6 <= float(cosine) <= 1.0 + 1e-6
        else:
            assert stats.critic_grad_norms is None
            assert stats.critic_cosine is None
            assert stats.actor_grad_norms is None
            assert stats.actor_cosine is None
    assert agent.updates == 3


def conflicting_agent(combiner: str, **kwargs: Any) -> MTSAC:
    """Tasks that see the same transitions but are rewarded in opposite directions."""
    agent = make_agent(combiner, use_task_id=False, **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(32):
        state = np.repeat(rng.normal(size=(1, STATE_DIM)), K, axis=0)
        obs = np.concatenate([state, np.eye(K)], axis=1)
        action = np.repeat(rng.uniform(-1, 1, size=(1, ACTION_DIM)), K, axis=0)
        next_obs = np.concatenate([np.repeat(rng.normal(size=(1, STATE_DIM)), K, axis=0), np.eye(K)], axis=1)
        reward = np.array([30.0, -30.0, 1.0])
        agent.replay_buffer.add(obs, action, reward, next_obs, np.ones(K))
    return agent


def test_fairgrad_weights_differ_from_uniform_on_conflicting_tasks() -> None:
    alpha = 2.0
    agent = conflicting_agent("fairgrad", combiner_kwargs={"alpha": alpha})
    critic_combiner = agent.combiners["critic"]
    grams: list[torch.Tensor] = []
    original_weights = critic_combiner.weights  # type: ignore[attr-defined]

    def recording_weights(gram: torch.Tensor) -> torch.Tensor:
        grams.append(gram.detach().clone())
        return original_weights(gram)

    critic_combiner.weights = recording_weights  # type: ignore[attr-defined]
    torch.manual_seed(0)
    stats = agent.update(fixed_batch(agent), diagnostics=True)
    weights = stats.critic_weights
    assert weights.shape == (K,)
    assert (weights > 0).all()
    assert stats.critic_cosine is not None
    assert float(stats.critic_cosine) < 0
    # Not a multiple of the uniform weights: the tasks are weighted differently.
    assert float(weights.max() / weights.min()) > 1.5
    # They are FairGrad's: (G Gᵀ) w = w^(-1/α) on the critic's Gram matrix.
    assert len(grams) == 1
    gram, w = grams[0].double(), weights.double()
    torch.testing.assert_close(gram @ w, w.pow(-1.0 / alpha), rtol=1e-3, atol=0.0)
    assert stats.critic_grad_norms is not None
    torch.testing.assert_close(
        stats.critic_grad_norms.double().square(), gram.diagonal(), rtol=1e-4, atol=0.0
    )


def test_mean_weights_are_exactly_one_over_k() -> None:
    for diagnostics in (False, True):
        agent = conflicting_agent("mean")
        torch.manual_seed(0)
        stats = agent.update(fixed_batch(agent), diagnostics=diagnostics)
        uniform = torch.full((K,), 1.0 / K)
        assert torch.equal(stats.critic_weights, uniform)
        assert torch.equal(stats.actor_weights, uniform)


def test_losses_not_combined_get_uniform_weights() -> None:
    agent = conflicting_agent("fairgrad", combine=["actor"])
    torch.manual_seed(0)
    stats = agent.update(fixed_batch(agent))
    assert torch.equal(stats.critic_weights, torch.full((K,), 1.0 / K))
    assert not torch.allclose(stats.actor_weights, torch.full((K,), 1.0 / K))


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combiner", ["fairgrad", "mean", "famo"])
def test_the_paper_setting_runs(combiner: str) -> None:
    agent = fill(
        make_agent(
            combiner,
            shared_temperature=True,
            combine=["critic", "actor", "temperature"],
            use_task_id=False,
        )
    )
    assert agent.net_obs_dim == STATE_DIM  # the one-hot id is dropped
    assert agent.log_alpha.shape == (1,)
    before = agent.log_alpha.detach().clone()
    torch.manual_seed(0)
    for i in range(2):
        stats = agent.update(agent.replay_buffer.sample(BATCH), diagnostics=(i == 0))
        assert_all_finite(stats, agent)
        assert torch.equal(stats.temperature, stats.temperature[0].expand(K))
    assert not torch.equal(agent.log_alpha, before)
    # The networks ignore the one-hot tail: changing it changes no action.
    obs = one_hot_obs(np.random.default_rng(1), K)
    shuffled = obs.copy()
    shuffled[:, STATE_DIM:] = np.eye(K)[::-1]
    assert np.array_equal(
        agent.predict(obs, deterministic=True)[0], agent.predict(shuffled, deterministic=True)[0]
    )


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="num_tasks, observation_space and action_space"):
        MTSAC(config=small_config(), device="cpu")
    with pytest.raises(ValueError, match="combiner_kwargs apply only"):
        MTSAC(
            num_tasks=K,
            observation_space=Box(-1, 1, (OBS_DIM,)),
            action_space=Box(-1, 1, (ACTION_DIM,)),
            device="cpu",
            config=small_config(),
            combiner=make("fairgrad"),
            combiner_kwargs={"alpha": 1.0},
        )
    with pytest.raises(ValueError, match="unknown combiner"):
        make_agent("fairgradd")
    with pytest.raises(ValueError, match="alpha"):
        make_agent("fairgrad", combiner_kwargs={"alpha": -1.0})


@pytest.mark.parametrize("name", ["famo", "torchjd:UPGrad", "torchjd:GradDrop"])
def test_combiners_are_separate_per_loss(name: str) -> None:
    """One copy per loss (the TorchJD adapter's copies once failed: its __new__ needs the name)."""
    agent = make_agent(name)
    assert set(agent.combiners) == set(LOSS_GROUPS)
    assert agent.combiners["critic"] is not agent.combiners["actor"]
    assert agent.combiner is agent.combiners["critic"]
    assert repr(agent.combiners["actor"]) == repr(agent.combiners["critic"]) == repr(make(name))


# --------------------------------------------------------------------------------------------------
# Stateful combiners, determinism
# --------------------------------------------------------------------------------------------------


def famo_state(agent: MTSAC, group: str) -> dict[str, Any]:
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else v
        for k, v in agent.combiners[group].state_dict().items()
    }


def test_famo_state_changes_and_survives_save_and_load(tmp_path: Path) -> None:
    agent = fill(make_agent("famo", combine=["critic"]))
    assert isinstance(agent.combiners["critic"], FAMO)
    torch.manual_seed(0)
    agent.update(agent.replay_buffer.sample(BATCH))
    first = famo_state(agent, "critic")
    assert first, "FAMO kept no state after an update"
    agent.update(agent.replay_buffer.sample(BATCH))
    second = famo_state(agent, "critic")
    assert any(isinstance(v, torch.Tensor) and not torch.equal(v, first[k]) for k, v in second.items()), (
        "FAMO's state did not change between updates"
    )
    logits = agent.combiners["critic"].logits
    assert logits is not None
    assert not torch.equal(logits, torch.zeros_like(logits))
    # The actor is not combined, so its FAMO instance never started.
    assert not famo_state(agent, "actor")

    path = tmp_path / "famo.pt"
    agent.save(path, include_replay_buffer=True)
    loaded = MTSAC.load(path, device="cpu")
    restored = famo_state(loaded, "critic")
    assert restored.keys() == second.keys()
    for key, value in second.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(restored[key], value), key
        else:
            assert restored[key] == value, key

    # Both continue identically: the same update from the same RNG state gives the same result.
    batch = fixed_batch(agent, seed=9)
    torch.manual_seed(5)
    agent.update(batch)
    torch.manual_seed(5)
    loaded.update(batch)
    for (name, a), b in zip(parameters(agent).items(), parameters(loaded).values(), strict=True):
        assert torch.equal(a, b), name
    for key, value in famo_state(agent, "critic").items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(famo_state(loaded, "critic")[key], value), key


@pytest.mark.parametrize("combiner", ["fairgrad", "pcgrad"])
def test_same_seed_same_buffer_gives_bit_identical_parameters(combiner: str) -> None:
    first, second = fill(make_agent(combiner, seed=4)), fill(make_agent(combiner, seed=4))
    for agent in (first, second):
        torch.manual_seed(21)
        for _ in range(3):
            agent.update(agent.replay_buffer.sample(BATCH))
    for (name, a), b in zip(parameters(first).items(), parameters(second).values(), strict=True):
        assert torch.equal(a, b), name


def test_different_seeds_give_different_networks() -> None:
    a, b = make_agent(seed=0), make_agent(seed=1)
    assert not torch.equal(next(a.actor.parameters()), next(b.actor.parameters()))


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


def test_predict_shapes() -> None:
    agent = make_agent()
    obs = one_hot_obs(np.random.default_rng(0), K)
    action, state = agent.predict(obs)
    assert state is None
    assert action.shape == (K, ACTION_DIM)
    single, _ = agent.predict(obs[1])
    assert single.shape == (ACTION_DIM,)
    deterministic_batch, _ = agent.predict(obs, deterministic=True)
    deterministic_single, _ = agent.predict(obs[1], deterministic=True)
    np.testing.assert_allclose(deterministic_single, deterministic_batch[1], rtol=1e-6, atol=1e-7)
    many, _ = agent.predict(np.concatenate([obs, obs]))
    assert many.shape == (2 * K, ACTION_DIM)
    with pytest.raises(ValueError, match=f"{OBS_DIM} values"):
        agent.predict(np.zeros((K, OBS_DIM + 1)))


def test_deterministic_predict_is_repeatable_and_stochastic_is_not() -> None:
    agent = make_agent()
    obs = one_hot_obs(np.random.default_rng(0), K)
    first, _ = agent.predict(obs, deterministic=True)
    second, _ = agent.predict(obs, deterministic=True)
    assert np.array_equal(first, second)
    sampled, _ = agent.predict(obs, deterministic=False)
    resampled, _ = agent.predict(obs, deterministic=False)
    assert not np.array_equal(sampled, resampled)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (-1.0, 1.0),
        (0.0, 2.0),
        (np.array([-3.0, 0.0, 10.0, -0.5], np.float32), np.array([-1.0, 0.1, 20.0, 0.5], np.float32)),
    ],
)
def test_actions_lie_within_the_bounds(low: Any, high: Any) -> None:
    space = Box(low, high, (ACTION_DIM,), np.float32)
    agent = make_agent(action_space=space)
    with torch.no_grad():  # wide means: most actions saturate at the bounds
        last = agent.actor.net[-1]
        last.weight.mul_(50.0)
    obs = np.concatenate([one_hot_obs(np.random.default_rng(s), K) for s in range(20)])
    for deterministic in (True, False):
        action, _ = agent.predict(obs, deterministic=deterministic)
        assert action.shape == (len(obs), ACTION_DIM)
        assert np.all(action >= space.low - 1e-6), (deterministic, action.min(axis=0))
        assert np.all(action <= space.high + 1e-6), (deterministic, action.max(axis=0))
    # The whole range is used (both ends are reached with saturated means).
    action, _ = agent.predict(obs, deterministic=True)
    assert np.all(action.min(axis=0) < space.low + 0.25 * (space.high - space.low))
    assert np.all(action.max(axis=0) > space.high - 0.25 * (space.high - space.low))


def test_zero_mean_maps_to_the_middle_of_the_box() -> None:
    space = Box(0.0, 2.0, (ACTION_DIM,), np.float32)
    agent = make_agent(action_space=space)
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.zero_()
    action, _ = agent.predict(one_hot_obs(np.random.default_rng(0), K), deterministic=True)
    np.testing.assert_allclose(action, np.ones((K, ACTION_DIM)), atol=1e-6)


def test_infinite_action_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"(?i)finite|bound"):
        make_agent(action_space=Box(-np.inf, np.inf, (ACTION_DIM,), np.float32))


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    agent = fill(make_agent("fairgrad", combiner_kwargs={"alpha": 3.0}, seed=7))
    torch.manual_seed(0)
    for _ in range(2):
        agent.update(agent.replay_buffer.sample(BATCH))
    agent.iteration, agent.num_timesteps = 40, 120
    path = tmp_path / "agent.pt"
    agent.save(path)
    assert path.is_file()
    assert Path(f"{path}.sha256").is_file()

    loaded = MTSAC.load(path, device="cpu")
    obs = one_hot_obs(np.random.default_rng(3), K)
    assert np.array_equal(
        agent.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    assert (loaded.iteration, loaded.num_timesteps, loaded.updates) == (40, 120, 2)
    assert repr(loaded.combiner) == repr(agent.combiner)
    assert loaded.combiner.hparams()["alpha"] == 3.0
    assert repr(loaded) == repr(agent)
    assert loaded.seed == 7
    assert loaded.task_names == agent.task_names
    assert loaded.config == agent.config
    for (name, a), b in zip(parameters(agent).items(), parameters(loaded).values(), strict=True):
        assert torch.equal(a, b), name
    # Optimiser state is restored too (Adam's moments).
    original_state = agent.critic_optimizer.state_dict()["state"]
    loaded_state = loaded.critic_optimizer.state_dict()["state"]
    assert original_state.keys() == loaded_state.keys()
    for index in original_state:
        assert torch.equal(original_state[index]["exp_avg"], loaded_state[index]["exp_avg"])
    # The replay buffer is not saved by default.
    assert len(loaded.replay_buffer) == 0


def test_save_load_with_the_replay_buffer(tmp_path: Path) -> None:
    agent = fill(make_agent(), transitions=80)  # wraps the 64-slot ring
    path = tmp_path / "agent.pt"
    agent.save(path, include_replay_buffer=True)
    loaded = MTSAC.load(path, device="cpu")
    assert (loaded.replay_buffer.size, loaded.replay_buffer.position) == (64, 16)
    for key, value in agent.replay_buffer.storage.items():
        assert torch.equal(loaded.replay_buffer.storage[key], value), key
    batch = fixed_batch(agent, seed=2)
    loaded_batch = fixed_batch(loaded, seed=2)
    for a, b in zip(batch, loaded_batch, strict=True):
        assert torch.equal(a, b)


def test_save_load_keeps_non_symmetric_action_bounds_and_torchjd(tmp_path: Path) -> None:
    low = np.array([0.0, -2.0, 1.0, 0.0], np.float32)
    space = Box(low, np.array([2.0, 2.0, 3.0, 0.5], np.float32), (ACTION_DIM,), np.float32)
    agent = make_agent("torchjd:UPGrad", action_space=space, shared_temperature=True)
    path = tmp_path / "agent.pt"
    agent.save(path)
    loaded = MTSAC.load(path, device="cpu")
    assert np.array_equal(loaded.action_space.low, space.low)
    assert np.array_equal(loaded.action_space.high, space.high)
    assert repr(loaded.combiner) == repr(agent.combiner)
    assert loaded.config.shared_temperature
    obs = one_hot_obs(np.random.default_rng(0), K)
    assert np.array_equal(
        agent.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )


def test_save_does_not_change_the_agent(tmp_path: Path) -> None:
    agent = fill(make_agent("famo"))
    before = copy.deepcopy(parameters(agent))
    agent.save(tmp_path / "agent.pt", include_replay_buffer=True)
    for name, value in parameters(agent).items():
        assert torch.equal(value, before[name]), name


# --------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------


@requires_cuda
def test_gpu_update_without_host_sync() -> None:
    agent = fill(make_agent("fairgrad", device="cuda"))
    assert agent.replay_buffer.storage["obs"].device.type == "cuda"
    torch.manual_seed(0)
    agent.update(agent.replay_buffer.sample(BATCH))  # warm-up: CUDA context, cuBLAS/cuSOLVER handles
    with no_host_sync():
        for _ in range(3):
            stats = agent.update(agent.replay_buffer.sample(BATCH), diagnostics=False)
    torch.cuda.synchronize()
    assert stats.critic_weights.device.type == "cuda"
    assert_all_finite(stats, agent)
    assert agent.updates == 4
