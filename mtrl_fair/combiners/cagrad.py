"""CAGrad: conflict-averse gradient descent, solved on the Gram matrix's device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtrl_fair.combiners.base import GramianCombiner, check_number
from mtrl_fair.combiners.mgda import (
    active_set_system,
    drop_vanished,
    iteration_count,
    solve_on_support,
    step_to_boundary,
)

# Floor on ‖g_w‖, relative to the root-mean-square gradient norm, below which the CAGrad
# correction ρ g_w / ‖g_w‖ is damped: its direction is then mostly cancellation error.
_NORM_FLOOR = 1e-4


class CAGrad(GramianCombiner):
    """Conflict-averse gradient descent: the best worst-task improvement near the average gradient.

    Liu, Liu, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021
    (arXiv 2110.14048).

    With ``g₀`` the average gradient and ``ρ = c‖g₀‖``, CAGrad looks for the update ``d`` with
    ``‖d − g₀‖ ≤ ρ`` that maximises the smallest task improvement ``minᵢ gᵢᵀd``. Its dual is
    ``min_w g_wᵀg₀ + ρ‖g_w‖`` over the probability simplex (``g_w = Σᵢ wᵢ gᵢ``), and then
    ``d = g₀ + (ρ / ‖g_w‖) g_w``. ``c = 0`` gives the mean; large ``c`` tends to MGDA.

    Solver: the dual is solved exactly by an active-set method like the one of
    :class:`~mtrl_fair.combiners.mgda.MGDA`. On a support ``S`` the minimiser over the affine hull
    has a closed form, found with one ``K×K`` solve with two right-hand sides: with ``x⊥`` the
    minimum-norm point of the hull and ``a = ‖P g₀‖`` the length of ``g₀`` projected on the hull's
    directions, it is ``x⊥ − (‖x⊥‖ / √(ρ² − a²)) P g₀`` when ``ρ > a`` (otherwise the objective
    decreases without bound along ``−P g₀`` until the simplex boundary). Each iteration moves
    towards that minimiser, dropping the task that reaches zero on the way, or, once there, adds
    the task that most violates the optimality conditions. The objective never increases and the
    iterate stays on the simplex; all iterations run (fixed work, no host synchronisation).

    Scale convention: the returned direction is ``(g₀ + (ρ / ‖g_w‖) g_w) / (1 + c²)``, the
    official code's default ``rescale=1``; its weights sum to ``(1 + ρ / ‖g_w‖) / (1 + c²)``. With
    ``c = 0`` it equals :class:`~mtrl_fair.combiners.mean.Mean`. The weights do not depend on
    the scale of the gradients, so the Gram matrix is normalised by its mean diagonal first.

    Departs from the official code (``cagrad`` in the authors' repository):
        - The official code solves the dual on the CPU with ``scipy.optimize.minimize`` (SLSQP
          at its defaults: at most 100 iterations, tolerance 1e-6, on an objective smoothed by
          ``√(· + 1e-8)``); this one solves it exactly on the Gram matrix's device.
        - ``ρ / ‖g_w‖`` uses ``max(‖g_w‖, 1e-4·rms)`` where ``rms`` is the root-mean-square task
          gradient norm, instead of ``‖g_w‖ + 1e-8`` in absolute units, so the damping does not
          depend on the gradients' scale.
        - Only ``rescale=1`` (divide by ``1 + c²``) is offered. The official code also has
          ``rescale=0`` (no division) and ``2`` (divide by ``1 + c``), and its Meta-World agent
          (``cagrad_exact``) divides by ``1 + ρ / ‖g_w‖`` instead, which makes the weights sum to 1.

    Args:
        c: radius of the ball around the average gradient, relative to its norm (``c >= 0``).
        max_iters: number of active-set iterations; ``None`` runs ``K + 8`` (see
            :class:`~mtrl_fair.combiners.mgda.MGDA`).
    """

    name = "cagrad"

    def __init__(self, *, c: float = 0.4, max_iters: int | None = None) -> None:
        self.c = check_number("c", c, at_least=0.0)
        if max_iters is not None:
            check_number("max_iters", max_iters, at_least=1, integer=True)
        self.max_iters = max_iters

    def hparams(self) -> dict[str, Any]:
        return {"c": self.c, "max_iters": self.max_iters}

    def weights(self, gram: Tensor) -> Tensor:
        q, diag, ridged, identity, add_tol, index = active_set_system(gram)
        num_tasks = q.shape[0]
        one = torch.ones((), dtype=q.dtype, device=q.device)

        # b_i = g_iᵀ g₀, so that bᵀw = g_wᵀ g₀; ‖g₀‖² = mean(b).
        b = q.mean(dim=1)
        rho = self.c * b.mean().clamp_min(0.0).sqrt()
        rho_sq = rho.square()
        unbounded_below = 1e-12 * rho_sq
        inf = torch.full_like(rho, torch.inf)
        rhs = torch.stack([torch.ones_like(b), b], dim=1)

        # Start at the best vertex.
        support = index == torch.argmin(b + rho * diag.clamp_min(0.0).sqrt())
        weights = support.to(q.dtype)
        for _ in range(iteration_count(self.max_iters, num_tasks)):
            z = solve_on_support(ridged, identity, support, rhs)
            z_ones, z_b = z[:, 0], z[:, 1]
            total = z_ones.sum()
            valid = torch.isfinite(z.sum()) & (total > 0)
            total = torch.where(valid, total, one)
            # Minimum-norm point of the support's affine hull, and the projection P g₀ of g₀ onto
            # the hull's directions, both as coefficient vectors (summing to 1 and to 0).
            closest = z_ones / total
            shift = z_b - (z_b.sum() / total) * z_ones
            gap = rho_sq - _sq_norm(shift, q)
            bounded = gap > unbounded_below
            target = closest - (_sq_norm(closest, q) / torch.where(bounded, gap, one)).sqrt() * shift
            # Towards the affine minimiser, or along the ray -P g₀ when the objective is unbounded
            # below on the hull; either way stop at the simplex boundary.
            direction = torch.where(valid, torch.where(bounded, target - weights, -shift), 0.0)
            step = step_to_boundary(weights, direction, torch.where(bounded, one, inf))
            step = torch.where(valid & (step < inf), step, 0.0)
            weights, support = drop_vanished(weights + step * direction)

            # Optimality check at the new point: (∇F)_i >= wᵀ∇F for every task i.
            q_weights = q @ weights
            norm = (weights @ q_weights).clamp_min(0.0).sqrt().clamp_min(_NORM_FLOOR)
            grad = b + (rho / norm) * q_weights
            lowest, worst = grad.min(0)
            add = bounded & (step >= 1.0) & (weights @ grad - lowest > add_tol)
            support = support | (add & (index == worst))

        lam = rho / _sq_norm(weights, q).sqrt().clamp_min(_NORM_FLOOR)
        combined = (1.0 / num_tasks + lam * weights) / (1.0 + self.c**2)
        return combined.to(gram.dtype)


def _sq_norm(weights: Tensor, q: Tensor) -> Tensor:
    """‖Σᵢ wᵢ gᵢ‖² from the Gram matrix, clamped at 0 against rounding."""
    return (weights @ q @ weights).clamp_min(0.0)
