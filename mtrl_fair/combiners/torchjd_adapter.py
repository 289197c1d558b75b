"""Any TorchJD aggregator as a combiner: ``make("torchjd:UPGrad")``, ``make("torchjd:MGDA", epsilon=1e-4)``.

TorchJD (https://github.com/TorchJD/torchjd) implements many Jacobian aggregators; this adapter makes
each of them usable wherever a :class:`~mtrl_fair.combiners.base.Combiner` is expected, mainly as a
reference for the native implementations.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtrl_fair.combiners.base import Combination, Combiner, GramianCombiner, check_jacobian

if TYPE_CHECKING:
    import torchjd.aggregation

TORCHJD_PREFIX = "torchjd:"


def _torchjd_aggregation() -> ModuleType:
    # Imported on first use: importing TorchJD (and its optional solvers) takes over a second,
    # which every user of the registry would otherwise pay.
    return importlib.import_module("torchjd.aggregation")


def available_aggregators() -> list[str]:
    """The names of the TorchJD aggregators that :class:`TorchJDAggregator` accepts."""
    tja = _torchjd_aggregation()
    # Generic bases take a Weighting object rather than hyperparameters: not aggregators by name.
    generic_bases = (tja.Aggregator, tja.WeightedAggregator, tja.GramianWeightedAggregator)
    names = []
    for name in dir(tja):
        value = getattr(tja, name)
        if (
            inspect.isclass(value)
            and issubclass(value, tja.Aggregator)
            and value not in generic_bases
            and not inspect.isabstract(value)
        ):
            names.append(name)
    return sorted(names)


class TorchJDAggregator(Combiner):
    """A TorchJD aggregator, ``getattr(torchjd.aggregation, aggregator_name)(**hparams)``.

    Unlike the native combiners, this one takes its hyperparameters as keyword arguments forwarded
    to the TorchJD constructor (``TorchJDAggregator("MGDA", epsilon=1e-4)``); lists and tuples of
    numbers passed for a parameter annotated as a tensor (``pref_vector``, ``weights``, ``leak``)
    are turned into (default-dtype) tensors, so that they can come from a config file.

    The direction is TorchJD's aggregation. The weights:

    - for a weighted aggregator (most of them: ``UPGrad``, ``MGDA``, ``NashMTL``, ...) they are the
      aggregator's own weights, computed once by its weighting (from the Gram matrix ``J Jᵀ`` for a
      Gramian-weighted one, exactly as TorchJD's ``forward`` does), and the direction is
      ``weights @ J``, so the two agree exactly. Hooks registered on the aggregator module itself
      are bypassed. If the aggregator is Gramian-weighted the combiner is also a
      :class:`~mtrl_fair.combiners.base.GramianCombiner` and exposes :meth:`weights` ``(gram)``.
    - for the others (``GradDrop``, ``TrimmedMean``, ``ConFIG``) the direction is not a function of
      the Gram matrix and TorchJD gives no weights: the weights returned are the least-squares
      coefficients of the direction on the task gradients, which only approximate it when the
      direction leaves the span of the rows (exact when the rows span it, e.g. K >= P).

    TorchJD aggregators are not written to be free of host synchronisation: several move the
    problem to the CPU and solve it with scipy, cvxpy or quadprog (``UPGrad``, ``DualProj``,
    ``CAGrad``, ``NashMTL``, ...), and some are stateful (``NashMTL``, ``ExcessMTL``;
    :meth:`reset` forwards to them, but their state is not checkpointed by :meth:`state_dict`).

    Raises:
        ValueError: for an unknown aggregator name (listing the available ones) or hyperparameters
            the aggregator does not accept (listing those it does).
    """

    name = "torchjd"

    def __new__(cls, aggregator_name: str, **hparams: Any) -> TorchJDAggregator:
        # A Gramian-weighted aggregator gets the GramianCombiner flavour, with weights(gram).
        tja = _torchjd_aggregation()
        target = getattr(tja, aggregator_name, None) if isinstance(aggregator_name, str) else None
        if (
            cls is TorchJDAggregator
            and inspect.isclass(target)
            and issubclass(target, tja.GramianWeightedAggregator)
        ):
            cls = _TorchJDGramianAggregator
        return super().__new__(cls)

    def __getnewargs__(self) -> tuple[str]:
        # copy.deepcopy and pickle call cls.__new__(cls, *these): without them __new__ misses its
        # required argument (MTSAC deep-copies its combiner once per loss).
        return (self.aggregator_name,)

    def __init__(self, aggregator_name: str, **hparams: Any) -> None:
        available = available_aggregators()
        if aggregator_name not in available:
            raise ValueError(
                f"unknown TorchJD aggregator {aggregator_name!r}; choose one of {', '.join(available)}"
            )
        aggregator_class = getattr(_torchjd_aggregation(), aggregator_name)
        parameters = {
            key: param
            for key, param in inspect.signature(aggregator_class).parameters.items()
            if param.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }
        accepted = ", ".join(parameters) if parameters else "none"
        unknown = sorted(set(hparams) - set(parameters))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for torchjd:{aggregator_name}; "
                f"accepted: {accepted}"
            )
        kwargs = {key: _as_tensor_if_expected(parameters[key], value) for key, value in hparams.items()}
        try:
            aggregator = aggregator_class(**kwargs)
        except (TypeError, ValueError) as error:
            required = [key for key, param in parameters.items() if param.default is inspect.Parameter.empty]
            raise ValueError(
                f"torchjd:{aggregator_name} rejected {hparams}: {error} "
                f"(accepted: {accepted}; required: {', '.join(required) or 'none'})"
            ) from error
        self.aggregator_name = aggregator_name
        self._hparams = dict(hparams)
        self.aggregator: torchjd.aggregation.Aggregator = aggregator

    def hparams(self) -> dict[str, Any]:
        return {"aggregator_name": self.aggregator_name, **self._hparams}

    def spec(self) -> tuple[str, dict[str, Any]]:
        return TORCHJD_PREFIX + self.aggregator_name, dict(self._hparams)

    def __repr__(self) -> str:
        return f"TorchJDAggregator({self.aggregator!r})"

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        check_jacobian(jacobian)
        if isinstance(self.aggregator, _torchjd_aggregation().WeightedAggregator):
            # What WeightedAggregator.forward does, keeping the weights it computes on the way.
            weights = self.aggregator.weighting(jacobian).to(device=jacobian.device, dtype=jacobian.dtype)
            return Combination(weights @ jacobian, weights)
        direction = self.aggregator(jacobian)
        return Combination(direction, _least_squares_weights(jacobian, direction))

    def reset(self) -> None:
        reset = getattr(self.aggregator, "reset", None)
        if callable(reset):
            reset()


class _TorchJDGramianAggregator(TorchJDAggregator, GramianCombiner):
    """A :class:`TorchJDAggregator` wrapping a Gramian-weighted aggregator: adds :meth:`weights`."""

    aggregator: torchjd.aggregation.GramianWeightedAggregator

    def weights(self, gram: Tensor) -> Tensor:
        return self.aggregator.gramian_weighting(gram).to(device=gram.device, dtype=gram.dtype)


def _as_tensor_if_expected(parameter: inspect.Parameter, value: Any) -> Any:
    """A list or tuple of numbers for a parameter annotated as a tensor becomes a tensor."""
    annotation = parameter.annotation
    expects_tensor = "Tensor" in (annotation if isinstance(annotation, str) else repr(annotation))
    if expects_tensor and isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return torch.tensor(list(value), dtype=torch.get_default_dtype())
    return value


def _least_squares_weights(jacobian: Tensor, direction: Tensor) -> Tensor:
    """The minimum-norm ``w`` minimising ``‖Jᵀ w - d‖``: effective weights of a non-weighted rule."""
    rows = jacobian.T.to(torch.float64)
    target = direction.to(torch.float64).unsqueeze(1)
    if rows.device.type == "cpu":
        solution = torch.linalg.lstsq(rows, target, driver="gelsd").solution
    else:
        # CUDA's lstsq only offers 'gels', which assumes full column rank; the pseudo-inverse is
        # the same minimum-norm least-squares solution and copes with rank-deficient Jacobians.
        solution = torch.linalg.pinv(rows) @ target
    return solution.squeeze(1).to(jacobian.dtype)
