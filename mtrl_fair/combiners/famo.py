"""FAMO: loss-based task weighting that balances the rates at which the task losses decrease.

Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
arXiv 2306.03792.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtrl_fair.combiners.base import Combination, Combiner, check_jacobian, check_losses, check_number

# torch.optim.Adam's defaults, which the official code uses for the logits.
_BETA1 = 0.9
_BETA2 = 0.999
_ADAM_EPS = 1e-8
_STATE_KEYS = ("logits", "exp_avg", "exp_avg_sq", "step", "log_losses_before")


class FAMO(Combiner):
    """Fast Adaptive Multitask Optimization (FAMO).

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, arXiv 2306.03792.

    FAMO seeks the update that decreases every task loss at the same *relative* rate, without the
    per-task gradients that methods like Nash-MTL need. It keeps task logits ``ξ`` with
    ``z = softmax(ξ)`` and descends ``Σᵢ zᵢ log ℓᵢ / c``, ``c = Σⱼ zⱼ/ℓⱼ``, i.e. it combines the task
    gradients with the weights ``wᵢ = (zᵢ/ℓᵢ) / Σⱼ (zⱼ/ℓⱼ) = softmax(ξ - log ℓ)ᵢ``. After the
    optimiser step it compares the log losses before and after, ``δ = log ℓ_before - log ℓ_after``,
    and moves the logits by Adam (with L2 weight decay ``gamma``) along the gradient
    ``∂(zᵀδ)/∂ξ``, which shifts weight toward the tasks whose losses decreased least.

    Usage: ``combine(jacobian, losses)`` with the ``(K,)`` losses at the current parameters, the
    optimiser step, then ``after_step(losses_after)`` with the losses *re-evaluated on the same
    batch* at the updated parameters (what the official code does, also in its Meta-World SAC
    agent, where the critic's TD targets are kept fixed for that re-evaluation). Passing the next
    batch's losses instead saves a forward pass but mixes batch noise into ``δ``. The logits are
    created at the first :meth:`combine`, with K and the device of the losses, starting at zero
    (uniform ``z``); :meth:`reset` forgets them.

    Scale convention: the weights are positive and sum to 1 (a convex combination, like the mean),
    and they are inversely proportional to the losses: a task whose loss is 10x smaller gets 10x
    the weight at equal logits. Rescaling a loss by a constant changes neither ``δ`` nor the
    direction's balance between tasks (``ℓᵢ`` and ``∇ℓᵢ`` scale together).

    Losses must be positive: FAMO reasons about ``log ℓ``. Losses below ``min_loss`` (including
    zero or negative ones, like SAC's actor loss) are clamped to ``min_loss``, which keeps every
    output finite but gives such a task almost all the weight. Use FAMO on positive losses only
    (the official Meta-World agent applies it to the critic loss alone), or shift the losses.

    Everything runs on the losses' device in float64, in place on the state tensors (so a
    captured CUDA graph replays the state updates), without host synchronisation.

    Departs from the official code:

    - The official code adds ``1e-8`` to the loss (and optionally subtracts per-task minimum
      losses, zero by default); here losses are clamped below at ``min_loss`` instead, so that zero
      or negative losses give finite weights rather than NaN.
    - The official code backpropagates the weighted log-loss; here the equivalent weights are
      returned and applied to the Jacobian (the same direction), computed stably as
      ``softmax(ξ - log ℓ)``.
    - The official ``FAMO.backward`` clips the gradient norm to ``max_norm = 1``; its Meta-World
      agent does not. No clipping here: that is the trainer's business.
    - The logits' Adam (``torch.optim.Adam`` defaults, coupled weight decay ``gamma``) is written
      out in float64 so that it runs in place and without host synchronisation; it takes exactly
      ``torch.optim.Adam``'s steps.
    - Defaults: ``gamma = 1e-3`` is the official Meta-World agent's (the generic ``FAMO`` class
      defaults to ``1e-2``); ``w_lr = 0.025`` is both official constructors' default (the Meta-World
      config overrode it to ``0.01``).

    Args:
        gamma: L2 weight decay of the logits in their Adam optimiser (pulls ``z`` toward uniform).
        w_lr: Learning rate of the logits' Adam optimiser.
        min_loss: Losses are clamped below at this positive value before taking logs.
    """

    name = "famo"
    requires_losses = True

    def __init__(self, *, gamma: float = 1e-3, w_lr: float = 0.025, min_loss: float = 1e-8) -> None:
        self.gamma = check_number("gamma", gamma, at_least=0.0)
        self.w_lr = check_number("w_lr", w_lr, above=0.0)
        self.min_loss = check_number("min_loss", min_loss, above=0.0)
        self._state: dict[str, Tensor] = {}
        self._has_losses_before = False

    def hparams(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "w_lr": self.w_lr, "min_loss": self.min_loss}

    @property
    def logits(self) -> Tensor | None:
        """The task logits ``ξ`` (``None`` before the first :meth:`combine`)."""
        return self._state.get("logits")

    def combine(self, jacobian: Tensor, losses: Tensor | None = None) -> Combination:
        check_jacobian(jacobian)
        num_tasks = jacobian.shape[0]
        losses = check_losses(losses, num_tasks, "FAMO")
        state = self._ensure_state(num_tasks, losses.device)
        log_losses = self._log_losses(losses)
        state["log_losses_before"].copy_(log_losses)
        self._has_losses_before = True
        weights = torch.softmax(state["logits"] - log_losses, dim=0)
        weights = weights.to(device=jacobian.device, dtype=jacobian.dtype)
        return Combination(weights @ jacobian, weights)

    def after_step(self, losses: Tensor) -> None:
        """Update the logits from the ``(K,)`` losses re-evaluated after the optimiser step."""
        if not self._has_losses_before:
            raise RuntimeError("FAMO.after_step needs a combine(jacobian, losses) call before it")
        state = self._state
        losses = check_losses(losses, state["logits"].shape[0], "FAMO")
        # δ > 0 where the loss went down; descending zᵀδ moves weight to the slow tasks.
        delta = state["log_losses_before"] - self._log_losses(losses).to(state["logits"].device)
        probs = torch.softmax(state["logits"], dim=0)
        # Vector-Jacobian product of the softmax: (diag(z) - z zᵀ) δ.
        grad = probs * (delta - (probs * delta).sum())
        grad = grad + self.gamma * state["logits"]  # torch.optim.Adam's (coupled) weight decay
        # A non-finite loss (before or after the step) must not poison the logits: that step of the
        # weight optimiser is skipped, decided on the device with no host synchronisation.
        ok = torch.isfinite(grad).all()
        grad = torch.where(ok, grad, torch.zeros_like(grad))
        step = state["step"] + ok.to(state["step"].dtype)
        exp_avg = state["exp_avg"] * _BETA1 + grad * (1.0 - _BETA1)
        exp_avg_sq = state["exp_avg_sq"] * _BETA2 + grad * grad * (1.0 - _BETA2)
        bias1 = 1.0 - torch.pow(_BETA1, step.clamp(min=1.0))
        bias2 = 1.0 - torch.pow(_BETA2, step.clamp(min=1.0))
        denom = exp_avg_sq.sqrt() / bias2.sqrt() + _ADAM_EPS
        logits = state["logits"] - self.w_lr * exp_avg / (bias1 * denom)
        state["step"].copy_(step)
        state["exp_avg"].copy_(torch.where(ok, exp_avg, state["exp_avg"]))
        state["exp_avg_sq"].copy_(torch.where(ok, exp_avg_sq, state["exp_avg_sq"]))
        state["logits"].copy_(torch.where(ok, logits, state["logits"]))
        self._has_losses_before = False

    def reset(self) -> None:
        self._state = {}
        self._has_losses_before = False

    def state_dict(self) -> dict[str, Any]:
        if not self._state:
            return {}
        state: dict[str, Any] = {key: value.clone() for key, value in self._state.items()}
        # Whether a combine is waiting for its after_step: a host flag, saved as a CPU tensor.
        state["pending"] = torch.tensor(self._has_losses_before)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.reset()
            return
        if set(state) != {*_STATE_KEYS, "pending"}:
            raise ValueError(
                f"FAMO state must have the keys {sorted({*_STATE_KEYS, 'pending'})}, got {sorted(state)}"
            )
        logits = state["logits"]
        if not isinstance(logits, Tensor) or logits.ndim != 1 or logits.shape[0] == 0:
            raise ValueError(f"FAMO state 'logits' must be a (K,) tensor, got {logits!r}")
        expected = {key: logits.shape for key in _STATE_KEYS} | {"step": torch.Size([])}
        for key in _STATE_KEYS:
            value = state[key]
            if not isinstance(value, Tensor) or value.shape != expected[key]:
                raise ValueError(f"FAMO state {key!r} must be a tensor of shape {tuple(expected[key])}")
        self._state = {
            key: state[key].detach().to(device=logits.device, dtype=torch.float64).clone()
            for key in _STATE_KEYS
        }
        # Loading is off the hot path: reading the flag back to the host is fine here.
        self._has_losses_before = bool(state["pending"])

    def _ensure_state(self, num_tasks: int, device: torch.device) -> dict[str, Tensor]:
        if not self._state:
            zeros = torch.zeros(num_tasks, dtype=torch.float64, device=device)
            self._state = {
                "logits": zeros.clone(),
                "exp_avg": zeros.clone(),
                "exp_avg_sq": zeros.clone(),
                "step": torch.zeros((), dtype=torch.float64, device=device),
                "log_losses_before": zeros.clone(),
            }
        elif self._state["logits"].shape[0] != num_tasks:
            raise ValueError(
                f"FAMO was set up for {self._state['logits'].shape[0]} tasks but got {num_tasks}; "
                "call reset() to start over with a different number of tasks"
            )
        return self._state

    def _log_losses(self, losses: Tensor) -> Tensor:
        return losses.detach().to(torch.float64).clamp(min=self.min_loss).log()
