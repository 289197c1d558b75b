"""The α-fair loss transform, the second contribution of the FairGrad paper.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, arXiv 2402.15638, apply
the α-fair utility to the task losses themselves and feed the transformed losses to an existing
loss-weighting method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl_fair.combiners.base import Combination, Combiner, check_jacobian, check_losses, check_number
from mtrl_fair.combiners.mean import Mean


def alpha_fair_loss(losses: Tensor, alpha: float, *, min_loss: float = 1e-8) -> Tensor:
    r"""The α-fair utility of each loss: ``ℓ^(1-α) / (1-α)``, or ``log ℓ`` for α = 1.

    Losses are clamped at ``min_loss`` first, since the utility is defined for positive values
    only. Its gradient is ``ℓ^(-α) ∇ℓ``: α = 0 leaves the losses as they are, α = 1 measures each
    task's progress relative to its loss (log-losses, as FAMO does), and larger α reweights more
    strongly by the inverse loss.
    """
    check_number("alpha", alpha, at_least=0.0)
    clamped = losses.clamp(min=min_loss)
    if alpha == 1.0:
        return clamped.log()
    return clamped.pow(1.0 - alpha) / (1.0 - alpha)


class AlphaFairLoss(Combiner):
    r"""Any combiner applied to α-fair transformed losses (Ban & Ji, 2024, arXiv 2402.15638).

    The transformed loss ``u_α(ℓᵢ)`` (see :func:`alpha_fair_loss`) has the gradient
    ``ℓᵢ^(-α) gᵢ``, so the transform is a row scaling of the Jacobian: this combiner scales row
    ``i`` by ``max(ℓᵢ, min_loss)^(-α)`` and hands the result (and the transformed losses, for a
    loss-based base such as FAMO) to the base combiner. The reported weights are the base's weights
    times the row scaling, so that ``direction == weights @ jacobian`` still holds.

    Losses must be positive for the transform to mean anything; critic losses are, SAC's actor loss
    usually is not. Non-positive losses are clamped at ``min_loss``, which gives those tasks a large
    weight ``min_loss^(-α)``: use this combiner on positive losses only.

    Args:
        alpha: fairness level of the transform, ``>= 0`` (0 is the identity).
        base: the combiner applied to the transformed losses; ``None`` is ``mean`` (linear
            scalarisation of the transformed losses). By name, through the registry:
            ``make("alpha_fair_loss", base="fairgrad")`` builds the base with its default
            hyperparameters, and this combiner's spec records the base by its registry name.
        min_loss: lower clamp of the losses, ``> 0``.

    Departs from the official code: the paper applies the transform inside each loss-weighting
    method's own code; here it is one wrapper usable around any combiner.
    """

    name = "alpha_fair_loss"
    requires_losses = True
    wraps = ("base",)

    def __init__(self, *, alpha: float = 1.0, base: Combiner | None = None, min_loss: float = 1e-8) -> None:
        self.alpha = check_number("alpha", alpha, at_least=0.0)
        self.min_loss = check_number("min_loss", min_loss, above=0.0)
        if base is None:
            base = Mean()
        if not isinstance(base, Combiner):
            raise ValueError(
                f"base must be a combiner, got {type(base).__name__}; by name, build this one with "
                "mtrl_fair.combiners.make('alpha_fair_loss', base=<name>)"
            )
        if isinstance(base, AlphaFairLoss):
            raise ValueError(f"base must be another combiner than {self.name!r}")
        self.base = base
        self.base_name = base.spec()[0]

    def hparams(self) -> dict[str, object]:
        return {"alpha": self.alpha, "base": self.base_name, "min_loss": self.min_loss}

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        check_jacobian(jacobian)
        losses = check_losses(losses, jacobian.shape[0], self.name)
        # float64 inside: the row scaling reaches min_loss^-α, which squared in a float32 Gram
        # matrix overflows for large gradients.
        clamped = losses.detach().to(torch.float64).clamp(min=self.min_loss)
        row_scale = clamped.pow(-self.alpha)
        transformed = alpha_fair_loss(clamped, self.alpha, min_loss=self.min_loss)
        inner = self.base.combine(
            row_scale.unsqueeze(1) * jacobian.to(torch.float64),
            transformed if self.base.requires_losses else None,
        )
        weights = inner.weights.to(torch.float64) * row_scale
        return Combination(inner.direction.to(jacobian.dtype), weights.to(jacobian.dtype))

    def after_step(self, losses: Tensor) -> None:
        self.base.after_step(alpha_fair_loss(losses.detach(), self.alpha, min_loss=self.min_loss))

    def reset(self) -> None:
        self.base.reset()

    def state_dict(self) -> dict[str, object]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.base.load_state_dict(state)
