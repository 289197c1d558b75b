"""Combiners by name: :func:`make` and :func:`available`.

Every method has one entry here and one file beside this one. ``torchjd:<Name>`` wraps any
aggregator of ``torchjd.aggregation`` (see :mod:`mtrl_fair.combiners.torchjd_adapter`).
"""

from __future__ import annotations

import inspect
from typing import Any

from mtrl_fair.combiners.base import Combiner
from mtrl_fair.combiners.cagrad import CAGrad
from mtrl_fair.combiners.fairgrad import FairGrad
from mtrl_fair.combiners.famo import FAMO
from mtrl_fair.combiners.imtlg import IMTLG
from mtrl_fair.combiners.loss_transform import AlphaFairLoss
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.combiners.mgda import MGDA
from mtrl_fair.combiners.nashmtl import NashMTL
from mtrl_fair.combiners.pcgrad import PCGrad
from mtrl_fair.combiners.torchjd_adapter import TORCHJD_PREFIX, TorchJDAggregator
from mtrl_fair.combiners.upgrad import UPGrad

COMBINERS: dict[str, type[Combiner]] = {
    cls.name: cls
    for cls in (Mean, FairGrad, PCGrad, CAGrad, MGDA, NashMTL, IMTLG, UPGrad, FAMO, AlphaFairLoss)
}


def available() -> list[str]:
    """The registry names accepted by :func:`make` (plus ``torchjd:<Name>`` for TorchJD aggregators)."""
    return sorted(COMBINERS)


def hparam_names(name: str) -> list[str]:
    """The hyperparameters that :func:`make` accepts for ``name``."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and params[p].kind is inspect.Parameter.KEYWORD_ONLY]


def make(name: str, **hparams: Any) -> Combiner:
    """Build a combiner by registry name, e.g. ``make("fairgrad", alpha=2.0)``.

    Raises:
        ValueError: for an unknown name, an unknown hyperparameter or a value out of range, with a
            message naming what is allowed.
    """
    if name.startswith(TORCHJD_PREFIX):
        return TorchJDAggregator(name[len(TORCHJD_PREFIX) :], **hparams)
    cls = _lookup(name)
    allowed = hparam_names(name)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for combiner {name!r}; accepted: {accepted}"
        )
    for key in cls.wraps:  # an inner combiner given by name is built here, by the registry
        if isinstance(hparams.get(key), str):
            hparams[key] = make(hparams[key])
    return cls(**hparams)


def _lookup(name: str) -> type[Combiner]:
    try:
        return COMBINERS[name]
    except KeyError:
        raise ValueError(
            f"unknown combiner {name!r}; choose one of {', '.join(available())}, or torchjd:<Aggregator>"
        ) from None
