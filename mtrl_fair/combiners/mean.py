"""Linear scalarisation: the plain average of the task gradients (multi-task SAC)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl_fair.combiners.base import Combination, GramianCombiner, check_jacobian


class Mean(GramianCombiner):
    """The mean of the task gradients, ``(1/K) Σᵢ gᵢ``: the gradient of the mean task loss.

    This is what plain multi-task SAC does, and the baseline every other combiner is compared with.
    """

    name = "mean"

    def weights(self, gram: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        # No Gram matrix needed: skip the K×K×P product.
        check_jacobian(jacobian)
        weights = self.weights(jacobian.new_empty(jacobian.shape[0], 0))
        return Combination(jacobian.mean(dim=0), weights)
