"""Gradient combiners: turn K per-task gradients into one update for the shared parameters.

>>> from mtrl_fair import combiners
>>> fairgrad = combiners.make("fairgrad", alpha=2.0)
>>> direction = fairgrad(jacobian)          # (K, P) -> (P,)
>>> weights = fairgrad.weights(jacobian @ jacobian.T)   # (K, K) -> (K,)
"""

from mtrl_fair.combiners.base import Combination, Combiner, GramianCombiner
from mtrl_fair.combiners.registry import available, hparam_names, make

__all__ = ["Combination", "Combiner", "GramianCombiner", "available", "hparam_names", "make"]
