import pytest
import torch
from combiner_checks import check_shape_and_finite, jacobians, random_jacobian
from hypothesis import given, settings

from mtrl_fair.combiners import make
from mtrl_fair.combiners.loss_transform import alpha_fair_loss


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_gradient_of_the_transform_is_the_row_scaling(alpha: float) -> None:
    losses = torch.tensor([0.3, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(alpha_fair_loss(losses, alpha).sum(), losses)
    assert torch.allclose(gradient, losses.detach() ** -alpha)


def test_alpha_one_is_log_and_alpha_zero_is_identity() -> None:
    losses = torch.tensor([0.5, 2.0])
    assert torch.allclose(alpha_fair_loss(losses, 1.0), losses.log())
    assert torch.allclose(alpha_fair_loss(losses, 0.0), losses)


def test_combiner_equals_mean_of_transformed_losses() -> None:
    # d/dθ mean(u_α(ℓ(θ))) = mean(ℓ^-α ∇ℓ): the wrapper around `mean` must give exactly that.
    weights = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(4, 3, dtype=torch.float64)
    losses = ((weights * inputs).sum(dim=1) ** 2) + 0.1
    jacobian = torch.stack(
        [torch.autograd.grad(loss, weights, retain_graph=True)[0].flatten() for loss in losses]
    )
    (expected,) = torch.autograd.grad(alpha_fair_loss(losses, 2.0).mean(), weights)
    direction = make("alpha_fair_loss", alpha=2.0)(jacobian, losses.detach())
    assert torch.allclose(direction, expected.flatten())


def test_needs_losses() -> None:
    with pytest.raises(ValueError, match="loss-based"):
        make("alpha_fair_loss")(random_jacobian(2, 3))


def test_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        make("alpha_fair_loss", alpha=-1.0)
    with pytest.raises(ValueError, match="unknown combiner"):
        make("alpha_fair_loss", base="nope")
    with pytest.raises(ValueError, match="min_loss must be a number > 0"):
        make("alpha_fair_loss", min_loss=0.0)


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians())
def test_finite_on_degenerate_inputs(jacobian: torch.Tensor) -> None:
    losses = torch.linspace(-1.0, 3.0, jacobian.shape[0])  # non-positive losses are clamped
    check_shape_and_finite(make("alpha_fair_loss", alpha=1.0, base="fairgrad"), jacobian, losses)


def test_repr() -> None:
    assert repr(make("alpha_fair_loss", alpha=2.0)) == "AlphaFairLoss(alpha=2.0, base='mean', min_loss=1e-08)"


def test_the_base_is_a_combiner_object_built_by_the_registry() -> None:
    from mtrl_fair.combiners.fairgrad import FairGrad
    from mtrl_fair.combiners.loss_transform import AlphaFairLoss
    from mtrl_fair.combiners.mean import Mean

    assert isinstance(AlphaFairLoss().base, Mean)
    wrapped = AlphaFairLoss(alpha=1.0, base=FairGrad())
    assert wrapped.hparams()["base"] == "fairgrad"
    assert isinstance(make("alpha_fair_loss", base="fairgrad").base, FairGrad)
    with pytest.raises(ValueError, match=r"base must be a combiner.*make\('alpha_fair_loss', base=<name>\)"):
        AlphaFairLoss(base="fairgrad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base must be another combiner than 'alpha_fair_loss'"):
        make("alpha_fair_loss", base="alpha_fair_loss")
