import pytest
import torch
from combiner_checks import random_jacobian

from mtrl_fair import combiners
from mtrl_fair.combiners import Combiner, GramianCombiner, available, hparam_names, make

EXPECTED = {
    "mean",
    "fairgrad",
    "pcgrad",
    "cagrad",
    "mgda",
    "nashmtl",
    "imtlg",
    "upgrad",
    "famo",
    "alpha_fair_loss",
}


def test_available_lists_every_method() -> None:
    assert set(available()) == EXPECTED
    assert available() == sorted(available())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_combiner_builds_with_defaults_and_combines(name: str) -> None:
    combiner = make(name)
    assert isinstance(combiner, Combiner)
    assert combiner.name == name
    assert repr(combiner).startswith(type(combiner).__name__ + "(")
    jacobian = random_jacobian(3, 7, seed=1)
    losses = torch.tensor([1.0, 2.0, 0.5]) if combiner.requires_losses else None
    combination = combiner.combine(jacobian, losses)
    assert combination.direction.shape == (7,)
    assert combination.weights.shape == (3,)
    assert torch.allclose(combination.direction, combination.weights @ jacobian, rtol=1e-4, atol=1e-5)
    if isinstance(combiner, GramianCombiner):
        assert combiner.weights(jacobian @ jacobian.T).shape == (3,)
    # The stateful protocol exists on every combiner and round-trips.
    combiner.load_state_dict(combiner.state_dict())
    combiner.reset()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hyperparameters_are_keyword_only_and_reported(name: str) -> None:
    combiner = make(name)
    assert set(combiner.hparams()) == set(hparam_names(name))


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown combiner 'fairgard'; choose one of alpha_fair_loss, cagrad"
    ):
        make("fairgard")


def test_unknown_hyperparameter_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hyperparameter.*alfa.*accepted: alpha, solver"):
        make("fairgrad", alfa=2.0)
    with pytest.raises(ValueError, match="accepted: none"):
        make("mean", alpha=2.0)


def test_torchjd_prefix_reaches_the_adapter() -> None:
    combiner = make("torchjd:Mean")
    jacobian = random_jacobian(3, 5, seed=2)
    assert torch.allclose(combiner(jacobian), jacobian.mean(dim=0), atol=1e-6)


def test_bad_jacobian_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"takes a \(K, P\) Jacobian"):
        make("fairgrad")(torch.zeros(5))
    with pytest.raises(ValueError, match=r"K >= 1"):
        make("mean")(torch.zeros(0, 3))


def test_public_names() -> None:
    assert {"make", "available", "Combiner", "GramianCombiner", "Combination"} <= set(combiners.__all__)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("fairgrad", {"alpha": 5.0}),
        ("famo", {"gamma": 0.01}),
        ("alpha_fair_loss", {"alpha": 2.0, "base": "upgrad"}),
        ("alpha_fair_loss", {"base": "torchjd:MGDA"}),
        ("torchjd:DualProj", {}),
        ("torchjd:MGDA", {"epsilon": 1e-4}),
    ],
)
def test_spec_rebuilds_the_same_combiner(name: str, hparams: dict[str, object]) -> None:
    combiner = make(name, **hparams)
    spec_name, spec_hparams = combiner.spec()
    assert spec_name == name
    rebuilt = make(spec_name, **spec_hparams)
    assert type(rebuilt) is type(combiner)
    assert rebuilt.hparams() == combiner.hparams()
    assert repr(rebuilt) == repr(combiner)
