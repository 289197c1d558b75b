"""A run trained in a pack computes what it computes alone, to float32 rounding (tests/packed_runs.py
trains both), and exactly the same whatever runs it is packed with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from packed_runs import CASES, SEEDS, config, largest_differences, pack
from point_tasks import K, make_env

from mtrl_fair.agents import MTSAC
from mtrl_fair.agents.checkpoint import save_checkpoint
from mtrl_fair.agents.packed import PackedMTSAC, RunSpec


@pytest.mark.parametrize("case", list(CASES))
def test_each_run_of_a_pack_is_the_run_alone_to_float32_rounding(case: str) -> None:
    # Not bit for bit: a batched product of R members may take another kernel than the same product
    # alone (MKL picks by the batch), and torch's vector kernels compute the tail of a tensor in a
    # scalar loop whose transcendental functions (softplus) round differently; which elements fall
    # there depends on the tensor's size. Both differ in the last place of float32.
    worst = largest_differences(case, 40)
    # The same transitions drawn by the same generators, with actions that differ in the last place.
    assert worst["buffer"] < 1e-6
    assert worst["weights"] < 1e-6  # weights of order 0.1-1: a few units in the last place of float32
    assert worst["optimizer"] < 1e-6
    assert worst["rewards"] < 1e-6
    assert worst["stats"] < 1e-4  # losses and weights of order 1-100


def test_a_run_does_not_depend_on_the_runs_packed_with_it() -> None:
    first, _ = pack([RunSpec(3, {"alpha": 2.0}), RunSpec(5, {"alpha": 2.0})], "fairgrad", 25)
    second, _ = pack([RunSpec(3, {"alpha": 2.0}), RunSpec(9, {"alpha": 0.5})], "fairgrad", 25)
    a, b = first.run_state_dict(0), second.run_state_dict(0)
    for key in ("actor", "critic", "critic_target"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_a_saved_run_of_a_pack_loads_as_a_solo_agent(tmp_path: Path) -> None:
    packed, _ = pack([RunSpec(seed, {"alpha": 2.0}) for seed in SEEDS[:2]], "fairgrad", 20)
    save_checkpoint(packed.run_state_dict(1, include_replay_buffer=True), tmp_path / "run1.pt")
    agent = MTSAC.load(tmp_path / "run1.pt", device="cpu")
    obs = np.random.default_rng(0).normal(size=(K, agent.obs_dim))
    np.testing.assert_array_equal(
        agent.predict(obs, deterministic=True)[0], packed.run(1).predict(obs, deterministic=True)[0]
    )
    assert agent.seed == SEEDS[1]
    assert agent.iteration == packed.iteration == 20
    assert repr(agent.combiner) == repr(packed.member_combiners["critic"][1])


def test_a_pack_resumes_from_its_runs_states() -> None:
    specs = [RunSpec(seed, {"alpha": 2.0}) for seed in SEEDS]
    packed, _ = pack(specs, "fairgrad", 20)
    states = [packed.run_state_dict(i, include_replay_buffer=True) for i in range(len(specs))]
    fresh = PackedMTSAC([make_env() for _ in specs], specs, combiner="fairgrad", config=config(), device="cpu")
    fresh.load_run_states(states)
    assert (fresh.iteration, fresh.updates) == (packed.iteration, packed.updates)
    for index in range(len(specs)):
        again = fresh.run_state_dict(index, include_replay_buffer=True)
        for key in ("actor", "critic", "critic_target"):
            for name, value in states[index][key].items():
                assert torch.equal(again[key][name], value)
        for key in ("actor_optimizer", "critic_optimizer", "temperature_optimizer"):
            for param, entry in states[index][key]["state"].items():
                for name, value in entry.items():
                    assert torch.equal(again[key]["state"][param][name], value)
    states[1]["counters"] = {**states[1]["counters"], "iteration": 3}
    with pytest.raises(ValueError, match="different iterations"):
        fresh.load_run_states(states)


@pytest.mark.parametrize("combiner", ["pcgrad", "famo", "torchjd:UPGrad"])
def test_combiners_that_cannot_be_packed_are_named(combiner: str) -> None:
    with pytest.raises(ValueError, match=r"cannot be packed.*packable combiners: mean, fairgrad"):
        PackedMTSAC([make_env()], [RunSpec(0, {})], combiner=combiner, config=config(), device="cpu")


def test_bad_packs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        PackedMTSAC([], [], combiner="mean", config=config(), device="cpu")
    with pytest.raises(ValueError, match="needs one env per run"):
        PackedMTSAC([make_env()], [RunSpec(0, {}), RunSpec(1, {})], combiner="mean", config=config(), device="cpu")


