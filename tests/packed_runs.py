"""Runs trained in a pack and alone, side by side, for tests/agents/test_packed.py.

``python tests/packed_runs.py [ITERATIONS]`` prints, as JSON, the largest differences between each
run of small packs and the same run trained alone (weights, optimizer moments, replay buffer,
rewards, update statistics).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from point_tasks import K, make_env

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.agents.packed import PackedMTSAC, RunSpec

SEEDS = (3, 5, 11)
PAPER = {"shared_temperature": True, "combine": ["critic", "actor", "temperature"], "use_task_id": False}
CASES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "fairgrad": ("fairgrad", [{"alpha": 2.0}, {"alpha": 0.0}, {"alpha": 1.0}], {}),
    "mean": ("mean", [{}, {}, {}], {}),
    "paper": ("fairgrad", [{"alpha": 2.0}] * 3, PAPER),
}


def config(**overrides: Any) -> MTSACConfig:
    values: dict[str, Any] = {"hidden_sizes": [32, 32], "batch_size_per_task": 8, "buffer_size_per_task": 200}
    values.update({"warmup_steps": 10, **overrides})
    return MTSACConfig(**values)


class Recorder:
    """A learn callback keeping the rewards and the update statistics of every iteration."""

    def __init__(self) -> None:
        self.steps: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def __call__(self, agent: Any, step: Any) -> None:
        stats = {} if step.stats is None else {
            name: value.detach().cpu().numpy().astype(np.float64)
            for name, value in step.stats._asdict().items()
            if value is not None
        }  # fmt: skip
        self.steps.append((np.array(step.reward, dtype=np.float64), stats))


def solo(seed: int, combiner: str, kwargs: dict[str, Any], iterations: int, **overrides: Any) -> tuple[MTSAC, Recorder]:
    agent = MTSAC(make_env(), combiner=combiner, combiner_kwargs=kwargs, config=config(**overrides), device="cpu", seed=seed)
    agent.diagnostics_every = 10
    recorder = Recorder()
    agent.learn(iterations * K, callback=recorder)
    return agent, recorder


def pack(specs: list[RunSpec], combiner: str, iterations: int, **overrides: Any) -> tuple[PackedMTSAC, list[Recorder]]:
    packed = PackedMTSAC([make_env() for _ in specs], specs, combiner=combiner, config=config(**overrides), device="cpu")
    packed.diagnostics_every = 10
    recorders = [Recorder() for _ in specs]
    packed.learn(iterations, callbacks=recorders)
    return packed, recorders


def largest_differences(case: str, iterations: int) -> dict[str, float]:
    """The largest absolute difference of each kind between every run of the pack and its solo twin."""
    combiner, kwargs, overrides = CASES[case]
    specs = [RunSpec(seed, kw) for seed, kw in zip(SEEDS, kwargs, strict=True)]
    packed, recorders = pack(specs, combiner, iterations, **overrides)
    worst = {"weights": 0.0, "optimizer": 0.0, "rewards": 0.0, "stats": 0.0, "buffer": 0.0}
    for index, spec in enumerate(specs):
        agent, recorder = solo(spec.seed, combiner, spec.combiner_kwargs, iterations, **overrides)
        got = packed.run_state_dict(index, include_replay_buffer=True)
        want = agent.state_dict(include_replay_buffer=True)
        assert got["counters"] == want["counters"]
        assert got["metadata"] == want["metadata"]
        for key in ("actor", "critic", "critic_target"):
            for name, value in want[key].items():
                worst["weights"] = max(worst["weights"], float((got[key][name] - value).abs().max()))
        worst["weights"] = max(worst["weights"], float((got["log_alpha"] - want["log_alpha"]).abs().max()))
        for key in ("actor_optimizer", "critic_optimizer", "temperature_optimizer"):
            for param, entry in want[key]["state"].items():
                for name, value in entry.items():
                    difference = (got[key]["state"][param][name].float() - value.float()).abs().max()
                    worst["optimizer"] = max(worst["optimizer"], float(difference))
        for name, value in want["replay_buffer"].items():
            difference = (torch.as_tensor(got["replay_buffer"][name]) - torch.as_tensor(value)).abs().max()
            worst["buffer"] = max(worst["buffer"], float(difference))
        assert len(recorders[index].steps) == len(recorder.steps) == iterations
        for (reward, stats), (want_reward, want_stats) in zip(recorders[index].steps, recorder.steps, strict=True):
            worst["rewards"] = max(worst["rewards"], float(np.abs(reward - want_reward).max()))
            assert stats.keys() == want_stats.keys()
            for name in stats:
                worst["stats"] = max(worst["stats"], float(np.abs(stats[name] - want_stats[name]).max()))
    return worst


if __name__ == "__main__":
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(json.dumps({case: largest_differences(case, iterations) for case in CASES}))
