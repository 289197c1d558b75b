"""MGDA: the minimum-norm element of the convex hull of the task gradients.

The solver here is an active-set method in the spirit of Wolfe's minimum-norm-point algorithm,
written as a fixed number of masked tensor iterations. :mod:`mtrl_fair.combiners.cagrad` reuses its
helpers (:func:`normalized_gram`, :func:`solve_on_support`, :func:`step_to_boundary`, ...).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from mtrl_fair.combiners.base import GramianCombiner, check_number, symmetrize


class MGDA(GramianCombiner):
    """The multiple-gradient descent direction: the shortest vector in the convex hull of the gradients.

    Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization", Comptes
    Rendus Mathématique 350 (2012); used for deep multi-task learning by Sener & Koltun, "Multi-Task
    Learning as Multi-Objective Optimization", NeurIPS 2018 (arXiv 1810.04650).

    The weights solve ``min_w ‖Σᵢ wᵢ gᵢ‖²`` over the probability simplex, i.e. the quadratic
    programme ``min_w wᵀ G w`` with ``w ≥ 0, Σ w = 1`` on the Gram matrix ``G``. The resulting
    direction has a non-negative inner product with every task gradient (it is zero exactly at a
    Pareto-stationary point).

    Solver: a primal active-set method (Wolfe's minimum-norm-point algorithm). It keeps a support
    ``S`` and a feasible ``w`` on it; each iteration solves the equality-constrained problem on ``S``
    in closed form with one ``K×K`` linear solve, then either moves to that solution (and adds the
    most violating task to ``S`` if the KKT conditions fail) or, when the solution leaves the
    simplex, moves towards it up to the boundary and drops the task that hit zero. The iterate is on
    the simplex after every iteration and the objective never increases, so stopping at the cap
    returns a valid, if inexact, answer. Once the support is found (typically after one iteration
    per support task plus a few) the answer is exact up to a ridge of ``8K`` machine epsilons of the
    Gram matrix's dtype, relative to each task's squared norm. All iterations always run (no host
    synchronisation, no data-dependent shapes), so the work is fixed.

    Scale convention: the weights are a convex combination (they sum to 1), as in the paper and the
    official code, so the direction is the minimum-norm element itself. The weights do not change
    when all gradients are scaled by one factor, so the Gram matrix is divided by its mean diagonal
    before solving.

    Departs from the official code (``MinNormSolver`` of Sener & Koltun):
        - The official solver starts from the best pair of tasks and runs projected-gradient (or
          Frank-Wolfe) steps on the CPU until a step changes the weights by less than 1e-5 (its
          250-iteration cap is never reached: the loop does not increment its counter); this one
          runs ``max_iters`` exact active-set iterations on the Gram matrix's device.
        - The official two-task solver clamps the mixing coefficient to [0.001, 0.999]; this one
          returns the exact minimiser, vertices included.
        - The official training code can first rescale each gradient (``normalization_type`` ``l2``,
          ``loss`` or ``loss+``); this combiner uses the gradients as given (``none``). Scale the
          rows of the Jacobian beforehand for the other variants.

    Args:
        max_iters: number of active-set iterations (each adds or drops tasks from the support).
            ``None`` (the default) runs ``K + 8``: the method usually finishes within a few more
            iterations than the support has tasks; stopping earlier returns a feasible point with
            a higher objective.
    """

    name = "mgda"

    def __init__(self, *, max_iters: int | None = None) -> None:
        if max_iters is not None:
            check_number("max_iters", max_iters, at_least=1, integer=True)
        self.max_iters = max_iters

    def hparams(self) -> dict[str, Any]:
        return {"max_iters": self.max_iters}

    def weights(self, gram: Tensor) -> Tensor:
        q, diag, ridged, identity, add_tol, index = active_set_system(gram)
        num_tasks = q.shape[0]
        ones = q.new_ones(num_tasks, 1)
        one = ones[0, 0]

        # Start at the shortest gradient: the best vertex of the simplex.
        support = index == torch.argmin(diag)
        weights = support.to(q.dtype)
        for _ in range(iteration_count(self.max_iters, num_tasks)):
            z = solve_on_support(ridged, identity, support, ones).squeeze(1)
            total = z.sum()
            valid = torch.isfinite(total) & (total > 0)
            # The minimum-norm point of the affine hull of the support (coefficients sum to 1).
            target = torch.where(valid, z / total, weights)
            step = step_to_boundary(weights, target - weights, one)
            weights, support = drop_vanished(torch.lerp(weights, target, step))

            # KKT check at the new point: every task must have (G w)_i >= wᵀ G w.
            grad = q @ weights
            lowest, worst = grad.min(0)
            add = (step >= 1.0) & (weights @ grad - lowest > add_tol)
            support = support | (add & (index == worst))
        return weights.to(gram.dtype)


class ActiveSetSystem(NamedTuple):
    """What the active-set solvers (MGDA, CAGrad) start from."""

    q: Tensor
    """The normalised float64 Gram matrix (see :func:`normalized_gram`)."""
    diag: Tensor
    """Its diagonal: the squared task-gradient norms at unit scale."""
    ridged: Tensor
    """``q`` with the ridge used to solve on a support (see :func:`ridged_system`)."""
    identity: Tensor
    """The K×K identity, on ``q``'s device."""
    add_tol: Tensor
    """How far a task must violate optimality before it joins the support."""
    task_index: Tensor
    """``arange(K)`` on ``q``'s device."""


def active_set_system(gram: Tensor) -> ActiveSetSystem:
    """Normalise and ridge the Gram matrix once, for an active-set solve on it."""
    q = normalized_gram(gram)
    diag = q.diagonal()
    eps = solver_eps(gram.dtype, q.shape[0])
    ridged, identity = ridged_system(q, eps)
    return ActiveSetSystem(
        q, diag, ridged, identity, eps * diag.max(), torch.arange(q.shape[0], device=q.device)
    )


def iteration_count(max_iters: int | None, num_tasks: int) -> int:
    """``max_iters``, or ``K + 8`` when it is ``None``."""
    return num_tasks + 8 if max_iters is None else max_iters


def normalized_gram(gram: Tensor) -> Tensor:
    """The symmetrised float64 Gram matrix divided by its mean diagonal (left as is when that is 0).

    Solving at unit scale keeps tolerances meaningful for gradients of any magnitude.
    """
    gram = symmetrize(gram.to(torch.float64))
    scale = gram.diagonal().mean()
    return gram / torch.where(scale > 0, scale, 1.0)


def solver_eps(dtype: torch.dtype, num_tasks: int) -> float:
    """Relative ridge and tolerance: a few ulps of the Gram matrix's own precision.

    A float32 Gram matrix is only accurate (and only positive semi-definite) to about its machine
    epsilon relative to the gradient norms; solving it to float64 accuracy would chase rounding noise.
    """
    return 8.0 * num_tasks * torch.finfo(dtype).eps


def ridged_system(q: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``Q`` plus a per-task ridge of ``eps`` times each squared norm, and the identity.

    The ridge is relative to each task's own norm because a float32 Gram entry's rounding error is
    relative to the two norms it multiplies; it is floored so that zero rows stay solvable.
    """
    identity = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
    return q + identity * (eps * q.diagonal().clamp_min(1e-20)), identity


def solve_on_support(ridged: Tensor, identity: Tensor, support: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``ridged_SS z_S = rhs_S``, with ``z = 0`` off the boolean ``support`` ``S``.

    Rows and columns outside the support are replaced by the identity (and the right-hand side by
    zeros), so the shape stays ``(K, K)`` whatever the support. ``solve_ex`` reports a singular
    system through ``info`` instead of raising, so this never synchronises; callers check that
    the solution is finite.
    """
    matrix = torch.where(support.unsqueeze(1) & support.unsqueeze(0), ridged, identity)
    return torch.linalg.solve_ex(matrix, torch.where(support.unsqueeze(1), rhs, 0.0))[0]


def step_to_boundary(weights: Tensor, direction: Tensor, max_step: Tensor) -> Tensor:
    """The largest ``t <= max_step`` with ``weights + t * direction >= 0`` (the ratio test).

    ``weights`` must be non-negative; coordinates with a zero direction (those off the support)
    never limit the step. ``max_step`` may be infinite, and so may the result.
    """
    ratios = weights / direction.neg().clamp_min(1e-300)
    return torch.minimum(torch.where(direction < 0, ratios, max_step).min(), max_step)


def drop_vanished(weights: Tensor, tol: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Zero the coefficients that reached the boundary and renormalise; return them and the support."""
    support = weights > tol
    weights = torch.where(support, weights, 0.0)
    return weights / weights.sum(), support
