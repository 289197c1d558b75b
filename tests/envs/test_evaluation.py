"""Tests of mtrl_fair.envs.evaluation: Meta-World's protocol on policies with known outcomes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scripted_policies import EXPERT_TASKS, ScriptedExperts, ZeroActions

import mtrl_fair
from mtrl_fair.envs import EvalResult, evaluate

# Meta-World's scripted policies ask for large moves, which the env clips; they warn about it.
pytestmark = pytest.mark.filterwarnings(r"ignore:Constant\(s\) may be too high")


@pytest.fixture(scope="module")
def expert_result() -> EvalResult:
    return evaluate(ScriptedExperts(EXPERT_TASKS), tasks=EXPERT_TASKS, episodes=3, seed=0)


def test_scripted_experts_always_succeed(expert_result):
    # Both experts solved all 60 episodes of seeds 0, 1 and 2 when this test was written.
    assert expert_result.per_task == {"reach-v3": 1.0, "drawer-close-v3": 1.0}
    assert expert_result.mean_success == 1.0


def test_zero_policy_never_reaches():
    # reach-v3 starts the hand at y = 0.6 and samples goals with y in [0.8, 0.9]; success needs a
    # distance <= 0.05, so a hand that never moves can never succeed, whatever the seed.
    result = evaluate(ZeroActions(), tasks=["reach-v3"], episodes=2, seed=0, progress=True)
    assert result.per_task == {"reach-v3": 0.0}
    assert result.mean_success == 0.0
    assert len(result.returns["reach-v3"]) == 2


def test_result_fields_and_exports(expert_result):
    assert list(expert_result.per_task) == EXPERT_TASKS  # the order given
    assert list(expert_result.returns) == EXPERT_TASKS
    assert all(len(returns) == 3 for returns in expert_result.returns.values())
    assert (expert_result.episodes, expert_result.benchmark, expert_result.seed) == (3, "MT10", 0)
    all_returns = [r for returns in expert_result.returns.values() for r in returns]
    assert expert_result.mean_return == pytest.approx(np.mean(all_returns))
    loaded = json.loads(json.dumps(expert_result.to_dict()))
    assert loaded["per_task"] == expert_result.per_task
    assert loaded["mean_return"] == pytest.approx(expert_result.mean_return)
    table = expert_result.to_markdown()
    assert all(f"| {task} | 100.0 |" in table for task in EXPERT_TASKS)
    assert "| **mean** | **100.0** |" in table


def test_package_exports_the_same_objects():
    assert mtrl_fair.evaluate is evaluate
    assert mtrl_fair.EvalResult is EvalResult
    assert {"evaluate", "EvalResult"} <= set(dir(mtrl_fair))


def test_importing_mtrl_fair_stays_light():
    code = "import sys, mtrl_fair; print(sorted({'metaworld', 'mujoco', 'gymnasium'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


@pytest.mark.parametrize("episodes", [0, -1, 2.5, True])
def test_episodes_must_be_a_positive_integer(episodes):
    with pytest.raises(ValueError, match=r"^episodes must be an integer >= 1"):
        evaluate(ZeroActions(), tasks=["reach-v3"], episodes=episodes)


def test_policy_needs_predict():
    with pytest.raises(ValueError, match=r"^policy must have a callable predict\(obs, deterministic=True\)"):
        evaluate(object(), tasks=["reach-v3"], episodes=1)


def test_wrong_action_shape_is_one_clear_error():
    class FlatActions:
        def predict(self, obs, deterministic=True):
            return np.zeros(4), None

    with pytest.raises(ValueError, match=r"returned actions of shape \(4,\), expected \(1, 4\)"):
        evaluate(FlatActions(), tasks=["reach-v3"], episodes=1)
