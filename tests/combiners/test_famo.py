"""FAMO: the weights, the logit update against the official update rule, state, degenerate inputs."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from combiner_checks import (
    check_shape_and_finite,
    check_weights_reproduce_direction,
    jacobians,
    no_host_sync,
    random_jacobian,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from markers import requires_cuda
from torch import Tensor

from mtrl_fair.combiners import Combination, Combiner, make
from mtrl_fair.combiners.famo import FAMO


class _WithLosses(Combiner):
    """Feeds fixed losses to a loss-based combiner, for the shared checks that pass none."""

    name = "with_losses"

    def __init__(self, combiner: Combiner, losses: Tensor) -> None:
        self.combiner = combiner
        self.losses = losses

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        return self.combiner.combine(jacobian, self.losses.to(jacobian.dtype))


class _OfficialFAMO:
    """The official update rule (Cranial-XIX/FAMO, famo.py), in float64 with min_losses = 0."""

    def __init__(self, num_tasks: int, gamma: float, w_lr: float) -> None:
        self.w = torch.zeros(num_tasks, dtype=torch.float64, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def weights(self, losses: Tensor) -> Tensor:
        # The gradient of the official weighted loss Σ zᵢ log(ℓᵢ + 1e-8) / c with respect to ℓ.
        self.prev_loss = losses
        loss = losses.clone().requires_grad_(True)
        z = F.softmax(self.w, -1)
        d = loss + 1e-8
        c = (z / d).sum().detach()
        (grad,) = torch.autograd.grad((d.log() * z / c).sum(), loss)
        return grad

    def update(self, curr_loss: Tensor) -> None:
        delta = (self.prev_loss + 1e-8).log() - (curr_loss + 1e-8).log()
        (d,) = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


def test_initial_weights_are_inverse_losses() -> None:
    jacobian = random_jacobian(3, 5, seed=0).double()
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    combination = FAMO().combine(jacobian, losses)
    expected = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 7.0
    assert torch.allclose(combination.weights, expected)
    assert torch.allclose(combination.direction, expected @ jacobian)


@pytest.mark.parametrize(("gamma", "w_lr"), [(1e-3, 0.025), (1e-2, 0.1), (0.0, 0.01)])
def test_matches_official_update(gamma: float, w_lr: float) -> None:
    generator = torch.Generator().manual_seed(0)
    num_tasks = 4
    jacobian = torch.randn(num_tasks, 6, generator=generator, dtype=torch.float64)
    famo = FAMO(gamma=gamma, w_lr=w_lr)
    official = _OfficialFAMO(num_tasks, gamma, w_lr)
    losses = torch.rand(num_tasks, generator=generator, dtype=torch.float64) + 0.5
    for _ in range(25):
        weights = famo.combine(jacobian, losses).weights
        # The official losses carry +1e-8 where ours are clamped at min_loss: agree to ~1e-8.
        assert torch.allclose(weights, official.weights(losses), rtol=1e-7, atol=0)
        new_losses = losses * (0.8 + 0.3 * torch.rand(num_tasks, generator=generator, dtype=torch.float64))
        famo.after_step(new_losses)
        official.update(new_losses)
        assert famo.logits is not None
        assert torch.allclose(famo.logits, official.w.detach(), rtol=1e-6, atol=1e-9)
        losses = new_losses


def test_after_step_moves_weight_to_slowest_task() -> None:
    famo = FAMO()
    jacobian = torch.eye(3, dtype=torch.float64)
    losses = torch.ones(3, dtype=torch.float64)
    assert torch.allclose(
        famo.combine(jacobian, losses).weights, torch.full((3,), 1.0 / 3, dtype=torch.float64)
    )
    famo.after_step(torch.tensor([0.5, 0.9, 0.7], dtype=torch.float64))  # task 1 decreased least
    weights = famo.combine(jacobian, losses).weights
    assert weights.argmax() == 1
    assert weights.argmin() == 0
    assert weights[1] > 1.0 / 3 > weights[0]


def test_state_dict_round_trip_through_torch_save() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(3, 4, generator=generator)
    famo = FAMO(gamma=0.01)
    for _ in range(3):
        famo.combine(jacobian, torch.rand(3, generator=generator) + 0.1)
        famo.after_step(torch.rand(3, generator=generator) + 0.1)
    pending_losses = torch.rand(3, generator=generator) + 0.1
    famo.combine(jacobian, pending_losses)  # checkpoint between combine and after_step
    buffer = io.BytesIO()
    torch.save(famo.state_dict(), buffer)
    buffer.seek(0)
    restored = FAMO(gamma=0.01)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    after = torch.rand(3, generator=generator) + 0.1
    famo.after_step(after)
    restored.after_step(after)
    losses = torch.rand(3, generator=generator) + 0.1
    assert torch.equal(famo.combine(jacobian, losses).weights, restored.combine(jacobian, losses).weights)
    for key, value in famo.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key])


def test_reset_and_empty_state() -> None:
    famo = FAMO()
    assert famo.state_dict() == {}
    jacobian = torch.eye(2)
    famo.combine(jacobian, torch.ones(2))
    famo.after_step(torch.tensor([0.1, 1.0]))
    assert set(famo.state_dict()) == {
        "logits",
        "exp_avg",
        "exp_avg_sq",
        "step",
        "log_losses_before",
        "pending",
    }
    famo.reset()
    assert famo.state_dict() == {}
    assert famo.logits is None
    assert torch.allclose(famo.combine(jacobian, torch.ones(2)).weights, torch.full((2,), 0.5))
    famo.load_state_dict({})
    assert famo.logits is None


def test_loss_handling_errors() -> None:
    famo = FAMO()
    jacobian = torch.eye(3)
    with pytest.raises(ValueError, match="loss-based"):
        famo.combine(jacobian)
    with pytest.raises(ValueError, match=r"\(3,\) task losses"):
        famo.combine(jacobian, torch.ones(2))
    with pytest.raises(RuntimeError, match="needs a combine"):
        famo.after_step(torch.ones(3))
    famo.combine(jacobian, torch.ones(3))
    with pytest.raises(ValueError, match="set up for 3 tasks"):
        famo.combine(torch.eye(2), torch.ones(2))
    with pytest.raises(ValueError, match="keys"):
        famo.load_state_dict({"logits": torch.zeros(3)})
    assert FAMO.requires_losses


def test_non_positive_losses_are_clamped() -> None:
    famo = FAMO(min_loss=1e-3)
    jacobian = torch.eye(3, dtype=torch.float64)
    weights = famo.combine(jacobian, torch.tensor([-5.0, 0.0, 1.0], dtype=torch.float64)).weights
    # Both clamped to 1e-3: equal weights, 1000x the weight of the task at loss 1.
    assert torch.allclose(weights, torch.tensor([1000.0, 1000.0, 1.0], dtype=torch.float64) / 2001.0)
    famo.after_step(torch.tensor([-10.0, 2.0, 0.5], dtype=torch.float64))
    assert famo.logits is not None
    assert torch.isfinite(famo.logits).all()


_losses = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.sampled_from([0.0, 1e-30, 1e30])


@settings(max_examples=40, deadline=None)
@given(jacobians(), st.data())
def test_finite_on_degenerate_inputs(jacobian: Tensor, data: st.DataObject) -> None:
    num_tasks = jacobian.shape[0]
    famo = FAMO()
    for _ in range(3):
        losses = torch.tensor(data.draw(st.lists(_losses, min_size=num_tasks, max_size=num_tasks)))
        combination = famo.combine(jacobian, losses)
        check_shape_and_finite(famo, jacobian, losses)
        assert torch.allclose(combination.weights.double().sum(), torch.tensor(1.0, dtype=torch.float64))
        famo.after_step(torch.tensor(data.draw(st.lists(_losses, min_size=num_tasks, max_size=num_tasks))))
    assert famo.logits is not None
    assert torch.isfinite(famo.logits).all()


@settings(max_examples=40, deadline=None)
@given(jacobians(), st.integers(0, 2**31 - 1))
def test_weights_reproduce_direction(jacobian: Tensor, seed: int) -> None:
    losses = torch.rand(jacobian.shape[0], generator=torch.Generator().manual_seed(seed)) + 1e-3
    check_weights_reproduce_direction(_WithLosses(FAMO(), losses), jacobian)


def test_permutation_equivariance() -> None:
    generator = torch.Generator().manual_seed(2)
    jacobian = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    losses = torch.rand(5, generator=generator, dtype=torch.float64) + 0.1
    after = losses * 0.9 ** torch.arange(5, dtype=torch.float64)
    permutation = torch.randperm(5, generator=generator)
    famo, permuted = FAMO(), FAMO()
    famo.combine(jacobian, losses)
    famo.after_step(after)
    permuted.combine(jacobian[permutation], losses[permutation])
    permuted.after_step(after[permutation])
    base = famo.combine(jacobian, losses)
    other = permuted.combine(jacobian[permutation], losses[permutation])
    assert torch.allclose(other.weights, base.weights[permutation], rtol=1e-12)
    assert torch.allclose(other.direction, base.direction, rtol=1e-12, atol=1e-14)


def test_hparams_and_registry() -> None:
    famo = make("famo", gamma=0.01, w_lr=0.1)
    assert isinstance(famo, FAMO)
    assert famo.hparams() == {"gamma": 0.01, "w_lr": 0.1, "min_loss": 1e-8}
    assert repr(famo) == "FAMO(gamma=0.01, w_lr=0.1, min_loss=1e-08)"


@pytest.mark.parametrize(
    "hparams",
    [
        {"gamma": -0.1},
        {"w_lr": 0.0},
        {"w_lr": "fast"},
        {"min_loss": 0.0},
        {"min_loss": -1.0},
        {"gamma": True},
    ],
)
def test_bad_hyperparameters(hparams: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - check_number's message is tested with base
        FAMO(**hparams)  # type: ignore[arg-type]


@requires_cuda
def test_gpu_no_host_sync() -> None:
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(10, 1000, generator=generator)
    losses = [torch.rand(10, generator=generator) + 0.1 for _ in range(4)]
    cpu, gpu = FAMO(), FAMO()
    for famo, device in ((cpu, "cpu"), (gpu, "cuda")):
        famo.combine(jacobian.to(device), losses[0].to(device))  # warm-up; creates the state
        famo.after_step(losses[1].to(device))
    jacobian_gpu, before, after = jacobian.cuda(), losses[2].cuda(), losses[3].cuda()
    with no_host_sync():
        combination = gpu.combine(jacobian_gpu, before)
        gpu.after_step(after)
    expected = cpu.combine(jacobian, losses[2])
    cpu.after_step(losses[3])
    assert torch.allclose(combination.weights.cpu(), expected.weights, rtol=1e-5)
    assert cpu.logits is not None
    assert gpu.logits is not None
    assert torch.allclose(gpu.logits.cpu(), cpu.logits, rtol=1e-9, atol=1e-12)


def test_a_non_finite_loss_leaves_the_state_untouched() -> None:
    famo = FAMO()
    jacobian = torch.randn(3, 5, dtype=torch.float64)
    famo.combine(jacobian, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    famo.after_step(torch.tensor([0.9, 1.8, 2.5], dtype=torch.float64))
    before = {key: value.clone() for key, value in famo.state_dict().items()}
    famo.combine(jacobian, torch.tensor([1.0, float("nan"), 3.0], dtype=torch.float64))
    famo.after_step(torch.tensor([0.9, 1.8, float("inf")], dtype=torch.float64))
    after = famo.state_dict()
    for key in ("logits", "exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(after[key], before[key]), key
    weights = famo.combine(jacobian, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).weights
    assert torch.isfinite(weights).all()
