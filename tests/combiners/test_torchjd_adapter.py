"""The TorchJD adapter: construction by name, errors, weights, and the Gramian flavour."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchjd.aggregation as tja
from combiner_checks import (
    check_gramian_weights_match_combine,
    check_shape_and_finite,
    check_weights_reproduce_direction,
    jacobians,
    random_jacobian,
)
from hypothesis import given, settings

from mtrl_fair.combiners import GramianCombiner, make
from mtrl_fair.combiners.torchjd_adapter import TORCHJD_PREFIX, TorchJDAggregator, available_aggregators


def test_upgrad_by_name() -> None:
    combiner = make("torchjd:UPGrad")
    assert isinstance(combiner, TorchJDAggregator)
    assert isinstance(combiner, GramianCombiner)
    assert combiner.name == "torchjd"
    jacobian = random_jacobian(4, 7, seed=0).double()
    combination = combiner.combine(jacobian)
    assert torch.allclose(combination.direction, tja.UPGrad()(jacobian), rtol=1e-12, atol=1e-14)
    assert torch.allclose(combination.weights, tja.UPGradWeighting()(jacobian @ jacobian.T), rtol=1e-12)
    check_gramian_weights_match_combine(combiner, jacobian)
    check_weights_reproduce_direction(combiner, jacobian)


def test_mgda_by_name_with_hparams() -> None:
    combiner = make("torchjd:MGDA", epsilon=1e-5, max_iters=200)
    jacobian = random_jacobian(3, 5, seed=1).double()
    assert torch.allclose(combiner(jacobian), tja.MGDA(epsilon=1e-5, max_iters=200)(jacobian), rtol=1e-12)
    assert combiner.hparams() == {"aggregator_name": "MGDA", "epsilon": 1e-5, "max_iters": 200}
    assert repr(combiner) == f"TorchJDAggregator({tja.MGDA(epsilon=1e-5, max_iters=200)!r})"
    check_weights_reproduce_direction(combiner, jacobian)


def test_unknown_aggregator() -> None:
    with pytest.raises(ValueError, match=r"unknown TorchJD aggregator 'Nope'.*UPGrad"):
        make("torchjd:Nope")
    with pytest.raises(ValueError, match="unknown TorchJD aggregator"):
        TorchJDAggregator("Aggregator")  # an abstract base, not an aggregator
    with pytest.raises(ValueError, match="unknown TorchJD aggregator"):
        TorchJDAggregator("torch")  # a module attribute that is not a class


def test_bad_hyperparameters() -> None:
    with pytest.raises(
        ValueError, match=r"unknown hyperparameter\(s\) eps for torchjd:MGDA; accepted: epsilon"
    ):
        make("torchjd:MGDA", eps=1e-3)
    with pytest.raises(ValueError, match="required: c"):
        make("torchjd:CAGrad")
    with pytest.raises(ValueError, match="epsilon"):
        make("torchjd:MGDA", epsilon=-1.0)


def test_available_aggregators() -> None:
    names = available_aggregators()
    assert {"UPGrad", "MGDA", "NashMTL", "GradDrop", "Mean", "IMTLG"} <= set(names)
    assert not {"Aggregator", "WeightedAggregator", "GramianWeightedAggregator"} & set(names)
    assert all(issubclass(getattr(tja, name), tja.Aggregator) for name in names)
    assert TORCHJD_PREFIX == "torchjd:"


def test_non_gramian_weighted_aggregator() -> None:
    # NashMTL is weighted from the matrix, not the Gram matrix: weights but no weights(gram).
    combiner = make("torchjd:NashMTL", n_tasks=3, max_norm=0.0)
    assert not isinstance(combiner, GramianCombiner)
    jacobian = random_jacobian(3, 6, seed=2).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy: "problem is not DPP"
        check_weights_reproduce_direction(combiner, jacobian)
        combiner.reset()  # forwarded to TorchJD's stateful aggregator
        assert combiner.aggregator.weighting.step == 0


def test_non_weighted_aggregator_least_squares_weights() -> None:
    combiner = make("torchjd:GradDrop")
    assert not isinstance(combiner, GramianCombiner)
    # With K >= P the rows span the whole space: the least-squares weights are exact.
    jacobian = random_jacobian(5, 3, seed=3).double()
    torch.manual_seed(0)
    check_weights_reproduce_direction(combiner, jacobian, rtol=1e-10)
    # Otherwise they are the best fit in the span of the rows.
    wide = random_jacobian(2, 6, seed=4).double()
    combination = combiner.combine(wide)
    residual = combination.direction - combination.weights @ wide
    assert torch.allclose(wide @ residual, torch.zeros(2, dtype=torch.float64), atol=1e-10)


def test_list_becomes_tensor_for_tensor_parameters() -> None:
    combiner = make("torchjd:UPGrad", pref_vector=[1.0, 2.0])
    jacobian = random_jacobian(2, 4, seed=5)
    reference = tja.UPGrad(pref_vector=torch.tensor([1.0, 2.0]))(jacobian)
    assert torch.allclose(combiner(jacobian), reference)
    assert combiner.hparams() == {"aggregator_name": "UPGrad", "pref_vector": [1.0, 2.0]}


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_finite_on_degenerate_inputs(jacobian: torch.Tensor) -> None:
    check_shape_and_finite(make("torchjd:Mean"), jacobian)
    check_shape_and_finite(make("torchjd:Sum"), jacobian)
