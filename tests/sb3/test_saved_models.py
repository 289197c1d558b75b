"""Models saved by mtrl_fair.sb3 as it was at commit c7c9eca (one module, mtrl_fair/sb3.py) still load.

The zips in data/ were made by that code, on the CPU, with ``make_vec_env("MT10", tasks=TASKS,
seed=0)``, ``batch_size=4, learning_starts=2, buffer_size=50, policy_kwargs={"net_arch": [16, 16]},
device="cpu", seed=0`` and ``learn(total_timesteps=10)``: MultiTaskSAC with ``combiner="fairgrad"``,
MultiTaskTD3 with ``combiner="famo", combiner_kwargs={"gamma": 0.01, "w_lr": 0.05}`` (a stateful
combiner, with hyperparameters of its own). The expected values below are what that code reported
just before saving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl_fair.sb3 import MultiTaskSAC, MultiTaskTD3

DATA = Path(__file__).parent / "data"
NUM_TASKS = 2
OBS_DIM = 39 + NUM_TASKS
ACTION_DIM = 4


def observations() -> np.ndarray:
    """One observation per task: fixed state values, then the one-hot task id."""
    obs = np.zeros((NUM_TASKS, OBS_DIM), dtype=np.float32)
    obs[:, :39] = np.linspace(-0.5, 0.5, 39, dtype=np.float32)
    obs[:, 39:] = np.eye(NUM_TASKS, dtype=np.float32)
    return obs


def assert_state_equal(restored: dict[str, Any], saved: dict[str, Any]) -> None:
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        if isinstance(restored[key], Tensor):
            expected = torch.tensor(value, dtype=restored[key].dtype)
            torch.testing.assert_close(restored[key], expected, rtol=0, atol=0, msg=key)
        else:
            assert restored[key] == value, key


def test_multitask_sac_from_c7c9eca_loads_and_predicts() -> None:
    model = MultiTaskSAC.load(DATA / "multitask_sac_c7c9eca.zip", device="cpu")
    actions, _ = model.predict(observations(), deterministic=True)
    assert actions.shape == (NUM_TASKS, ACTION_DIM)
    np.testing.assert_allclose(
        actions,
        [
            [-0.18641000986099243, 0.02938854694366455, -0.021422147750854492, 0.05002307891845703],
            [-0.16432946920394897, 0.007878541946411133, -0.050017714500427246, 0.04349219799041748],
        ],
        rtol=1e-5,
        atol=1e-6,
    )
    assert model.num_tasks == NUM_TASKS
    assert (model.num_timesteps, model._n_updates) == (10, 4)
    assert model.combiner_name == "fairgrad"
    assert model.combiner_kwargs == {}
    assert model.combine == ["critic", "actor"]
    assert not model.per_task_temperature
    assert repr(model.combiners) == "FairGrad(alpha=2.0, solver='newton', max_iter=50, ridge=1e-10)"
    for group in ("critic", "actor"):
        assert_state_equal(model.combiners[group].state_dict(), {})
    torch.testing.assert_close(
        model.log_ent_coef.detach(), torch.tensor([-0.0011975446250289679]), rtol=0, atol=0
    )
    for optimizer in (model.actor.optimizer, model.critic.optimizer, model.ent_coef_optimizer):
        assert optimizer.defaults["fused"] is True


def test_multitask_td3_from_c7c9eca_loads_and_predicts_with_its_famo_state() -> None:
    model = MultiTaskTD3.load(DATA / "multitask_td3_c7c9eca.zip", device="cpu")
    actions, _ = model.predict(observations(), deterministic=True)
    assert actions.shape == (NUM_TASKS, ACTION_DIM)
    np.testing.assert_allclose(
        actions,
        [
            [-0.19386792182922363, 0.04276561737060547, -0.017431795597076416, 0.0576014518737793],
            [-0.17105817794799805, 0.02121102809906006, -0.04623657464981079, 0.05090689659118652],
        ],
        rtol=1e-5,
        atol=1e-6,
    )
    assert model.num_tasks == NUM_TASKS
    assert (model.num_timesteps, model._n_updates) == (10, 4)
    assert model.combiner_name == "famo"
    assert model.combiner_kwargs == {"gamma": 0.01, "w_lr": 0.05}
    assert model.combine == ["critic", "actor"]
    assert repr(model.combiners) == "FAMO(gamma=0.01, w_lr=0.05, min_loss=1e-08)"
    assert_state_equal(
        model.combiners["critic"].state_dict(),
        {
            "logits": [0.19686237429796663, -0.19686237429796663],
            "exp_avg": [-0.0019627341587808555, 0.001962734158780856],
            "exp_avg_sq": [1.3812608506763309e-07, 1.381260850676331e-07],
            "step": 4.0,
            "log_losses_before": [1.6526876217311448, -1.3642939399472953],
            "pending": False,
        },
    )
    assert_state_equal(
        model.combiners["actor"].state_dict(),
        {
            "logits": [0.01685529558055223, -0.01685529558055223],
            "exp_avg": [3.137619314114177e-05, -3.137619314114177e-05],
            "exp_avg_sq": [1.2413896717163473e-10, 1.2413896717163473e-10],
            "step": 2.0,
            "log_losses_before": [-2.8334646017459337, -2.8840860091040885],
            "pending": False,
        },
    )
