"""FairGrad: α-fair allocation of the update among tasks.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, arXiv 2402.15638.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtrl_fair.combiners import fairgrad_kernel
from mtrl_fair.combiners.base import GramianCombiner, check_choice, check_number, symmetrize

SOLVERS = ("newton", "least_squares", "sgd")
BACKENDS = ("auto", "kernel", "torch", "numpy")

# Step lengths tried at once by the Newton line search: t_max · 2^-j, j = 0..LINE_SEARCH_STEPS-1.
LINE_SEARCH_STEPS = 12
ARMIJO = 1e-4
ROUND_OFF = 1e-13
# Fraction of the distance to the boundary w = 0 that one Newton step may travel.
TO_BOUNDARY = 0.99
# The Newton loop stops once the relative residual is this small, where stopping is free: on the
# CPU, and inside the CUDA kernel (see fairgrad_weights).
TOLERANCE = 1e-12


class FairGrad(GramianCombiner):
    r"""FairGrad (Ban & Ji, ICML 2024, arXiv 2402.15638).

    The update ``d = Gᵀ w`` maximises the sum of α-fair utilities of the task rates ``gᵢᵀ d``
    inside a ball. Its weights ``w > 0`` solve ``(G Gᵀ) w = w^(-1/α)`` (elementwise power), where
    ``G`` is the ``(K, P)`` Jacobian: α = 1 is proportional fairness (the Nash bargaining solution
    of Nash-MTL), α = 2 minimum potential delay (the paper's runs), α → ∞ max-min fairness.

    The system is the stationarity condition of the strictly convex potential
    ``φ(w) = ½ wᵀ(G Gᵀ)w − Σᵢ v(wᵢ)`` with ``v'(w) = w^(-1/α)``. The default solver minimises it
    with damped Newton steps (see :func:`fairgrad_weights`): exact to round-off, on the Gram
    matrix's device, with no host synchronisation, so that it can be captured in a CUDA graph.
    On CUDA the whole solve is one Triton kernel that stops at round-off on the device; on the
    CPU it runs in NumPy, where it typically converges in 4 to 8 iterations.

    Scale convention: the direction is ``Gᵀ w`` with ``w`` the solution of the system as written,
    with no rescaling (as the paper's RL code). The scale of ``w`` follows from the system: scaling
    all gradients by ``c`` scales the direction by ``c^((1-α)/(1+α))``. Under Adam the overall
    scale of an update barely matters. ``alpha=0`` is the limit where the utility is linear: the
    weights are uniform, and they are returned as ``1/K`` so that ``fairgrad(alpha=0)`` equals
    ``mean`` exactly (as TorchJD does).

    Regularisation: the solve uses ``G Gᵀ + ridge · s · I``, where ``s`` is the mean squared task
    gradient norm (the Gram matrix's mean diagonal). Without it the system has no solution when a
    task's gradient vanishes or two gradients are opposite (the weight diverges); with it such a
    weight is bounded by ``(ridge · s)^(-α/(1+α))``, while a vanished gradient contributes nothing
    to the direction whatever its weight. For well-conditioned Gram matrices the relative change
    in the weights is of order ``ridge`` times the condition number.

    Args:
        alpha: fairness level, ``>= 0``.
        solver: ``"newton"`` (default: exact, sync-free), ``"least_squares"`` (the paper's
            supervised code: ``scipy.optimize.least_squares`` on the CPU from ``w = 1/K`` with
            bounds ``(0, ∞)``; syncs with the host), or ``"sgd"`` (the paper's RL code: 20 SGD
            steps, lr 0.1, momentum 0.5, gradient-norm clip 1.0, clamp at 1e-8, best iterate kept;
            inexact, kept to reproduce published numbers).
        max_iter: iteration cap of the Newton solver (``"newton"`` only; the SGD solver keeps
            the paper's 20 steps).
        ridge: relative regularisation of the Gram matrix (``"newton"`` only).

    Departs from the official code:
        * the published supervised code multiplies the update by K and clips its norm at 1.0
          before the optimiser step; here the combiner returns the unscaled ``Gᵀ w`` and any
          clipping belongs to the training loop;
        * the published RL code solves the system with 20 SGD steps, which does not converge
          (on an MT10-sized Gram matrix it leaves a residual of about 1e4); ``solver="sgd"``
          reproduces it on request, the default solves the system exactly;
        * the official code has no ridge; its solvers fail in the degenerate cases the ridge
          covers.
    """

    name = "fairgrad"

    def __init__(
        self, *, alpha: float = 2.0, solver: str = "newton", max_iter: int = 50, ridge: float = 1e-10
    ) -> None:
        self.alpha = check_number("alpha", alpha, at_least=0.0)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.max_iter = int(check_number("max_iter", max_iter, at_least=1, integer=True))
        self.ridge = check_number("ridge", ridge, at_least=0.0, at_most=1.0)
        if math.isinf(self.alpha):
            raise ValueError("alpha must be finite (use a large value such as 100 for max-min fairness)")

    def hparams(self) -> dict[str, object]:
        return {"alpha": self.alpha, "solver": self.solver, "max_iter": self.max_iter, "ridge": self.ridge}

    def weights(self, gram: Tensor) -> Tensor:
        if self.alpha == 0.0:
            num_tasks = gram.shape[0]
            return torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
        if self.solver == "least_squares":
            return fairgrad_weights_least_squares(gram, self.alpha)
        if self.solver == "sgd":
            return fairgrad_weights_sgd(gram, self.alpha)
        return fairgrad_weights(gram, self.alpha, max_iter=self.max_iter, ridge=self.ridge)


@torch.no_grad()
def fairgrad_weights(
    gram: Tensor, alpha: float, *, max_iter: int = 50, ridge: float = 1e-10, backend: str = "auto"
) -> Tensor:
    r"""Solve ``gram @ w = w^(-1/alpha)`` for ``w > 0`` by damped Newton steps on the convex potential.

    ``alpha > 0``. The Gram matrix is first normalised by its mean diagonal ``s`` (so the solve is
    the same at any gradient scale, from 1e-12 to 1e12) and regularised by ``ridge · I``; the
    weights of the normalised system ``u`` give ``w = s^(-α/(1+α)) u``.

    Each iteration takes the Newton step of ``φ(u) = ½ uᵀAu − Σ v(uᵢ)``, shortens it to stay
    inside ``u > 0`` (fraction to the boundary) and picks the longest of a fixed set of step
    lengths that satisfies Armijo's decrease condition, all evaluated at once. Work per call is
    fixed and no value is read back to the host, so on CUDA the solve is sync-free and
    graph-capturable; on the CPU, where reading a value back costs nothing, the loop stops as soon
    as the residual reaches round-off. Computation is in float64; the result has ``gram.dtype``.

    The same iteration has three implementations, chosen by ``backend="auto"`` and tested
    against each other: on CUDA with Triton and K <= 64, one kernel
    (:mod:`mtrl_fair.combiners.fairgrad_kernel`) that also stops at round-off, on the device;
    elsewhere on CUDA, tensor ops (``backend="torch"``); on the CPU, NumPy (``backend="numpy"``),
    whose per-operation overhead is a tenth of torch's at this size, which matters when the solve
    runs before every update.
    """
    num_tasks = gram.shape[0]
    if backend not in BACKENDS or (backend == "numpy" and gram.device.type != "cpu"):
        raise ValueError(f"backend must be one of {BACKENDS} ('numpy' for CPU tensors only), got {backend!r}")
    if (
        backend in ("auto", "kernel")
        and gram.is_cuda
        and num_tasks <= fairgrad_kernel.MAX_TASKS
        and fairgrad_kernel.available()
    ):
        return fairgrad_kernel.fairgrad_weights_kernel(
            gram,
            alpha,
            max_iter=max_iter,
            ridge=ridge,
            line_search_steps=LINE_SEARCH_STEPS,
            armijo=ARMIJO,
            round_off=ROUND_OFF,
            to_boundary=TO_BOUNDARY,
            tolerance=TOLERANCE,
        )
    if backend == "numpy" or (backend == "auto" and gram.device.type == "cpu"):
        weights64 = _fairgrad_weights_numpy(gram.detach().numpy().astype(np.float64), alpha, max_iter, ridge)
        return torch.from_numpy(weights64).to(gram.dtype)
    dtype = gram.dtype
    exponent = 1.0 / alpha  # p in v'(u) = u^-p
    gram64 = symmetrize(gram.to(torch.float64))
    eye = torch.eye(num_tasks, dtype=torch.float64, device=gram.device)

    diag_mean = torch.diagonal(gram64).mean()
    tiny = torch.finfo(torch.float64).tiny
    scale = torch.where(diag_mean > tiny, diag_mean, torch.ones_like(diag_mean))
    matrix = gram64 / scale + ridge * eye

    # Start from the solution of each row taken alone, with the row's sum standing for A u:
    # (A 1)ᵢ uᵢ = uᵢ^-p. It accounts for both the norms and the correlation of the gradients.
    row_sums = torch.maximum(matrix.sum(dim=1), torch.diagonal(matrix) / num_tasks)
    u = row_sums ** (-1.0 / (1.0 + exponent))

    steps = 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=torch.float64, device=gram.device)
    potential = _potential(matrix, u.unsqueeze(0), exponent)[0]
    check_early_exit = gram.device.type == "cpu"
    for _ in range(max_iter):
        target = u.pow(-exponent)
        matrix_u = (matrix * u).sum(dim=1)
        gradient = matrix_u - target
        if check_early_exit and bool(
            torch.linalg.vector_norm(gradient) <= TOLERANCE * torch.linalg.vector_norm(target)
        ):
            break
        hessian = matrix + torch.diag(exponent * target / u)
        # solve_ex does not check for singular input, so it never syncs; the Hessian is positive
        # definite (A is PSD plus ridge, and the barrier term is positive).
        direction = -torch.linalg.solve_ex(hessian, gradient)[0]
        # Longest step keeping u > 0, capped at the full Newton step.
        ratio = torch.where(direction < 0, u / (-direction).clamp(min=tiny), math.inf)
        lengths = torch.clamp(TO_BOUNDARY * ratio.min(), max=1.0) * steps
        candidates = u + lengths.unsqueeze(1) * direction
        candidate_potentials = _potential(matrix, candidates, exponent)
        # Armijo's condition, with a round-off allowance: near the solution the decrease of φ is
        # below its rounding error, and the full Newton step must still be taken there.
        allowance = ROUND_OFF * (potential.abs() + (u * matrix_u).sum())
        accepted = (
            candidate_potentials <= potential + ARMIJO * lengths * (gradient * direction).sum() + allowance
        )
        # The longest accepted step; if none is, the shortest one (a tiny step that keeps u > 0).
        first = torch.argmax(accepted.to(torch.int8))
        first = torch.where(accepted.any(), first, LINE_SEARCH_STEPS - 1)
        # index_select, not candidates[first]: indexing with a 0-d tensor reads it back (.item()).
        u = candidates.index_select(0, first.reshape(1)).squeeze(0)
        potential = candidate_potentials.index_select(0, first.reshape(1)).squeeze(0)

    weights = u * scale ** (-alpha / (1.0 + alpha))
    return weights.to(dtype)


def _fairgrad_weights_numpy(gram: np.ndarray, alpha: float, max_iter: int, ridge: float) -> np.ndarray:
    """The Newton iteration of :func:`fairgrad_weights` in NumPy, for CPU tensors (float64)."""
    num_tasks = gram.shape[0]
    exponent = 1.0 / alpha
    gram = 0.5 * (gram + gram.T)
    diag_mean = np.diagonal(gram).mean()
    scale = diag_mean if diag_mean > 0.0 else 1.0
    matrix = gram / scale + ridge * np.eye(num_tasks)
    row_sums = np.maximum(matrix.sum(axis=1), np.diagonal(matrix) / num_tasks)
    u = row_sums ** (-1.0 / (1.0 + exponent))
    steps = 0.5 ** np.arange(LINE_SEARCH_STEPS)
    potential = _potential_numpy(matrix, u[None, :], exponent)[0]
    for _ in range(max_iter):
        target = u**-exponent
        matrix_u = matrix @ u
        gradient = matrix_u - target
        if np.linalg.norm(gradient) <= TOLERANCE * np.linalg.norm(target):
            break
        direction = -np.linalg.solve(matrix + np.diag(exponent * target / u), gradient)
        shrinking = direction < 0
        longest = (
            min(1.0, TO_BOUNDARY * (u[shrinking] / -direction[shrinking]).min()) if shrinking.any() else 1.0
        )
        lengths = longest * steps
        candidates = u + lengths[:, None] * direction
        candidate_potentials = _potential_numpy(matrix, candidates, exponent)
        allowance = ROUND_OFF * (abs(potential) + u @ matrix_u)
        accepted = candidate_potentials <= potential + ARMIJO * lengths * (gradient @ direction) + allowance
        first = int(np.argmax(accepted)) if accepted.any() else LINE_SEARCH_STEPS - 1
        u, potential = candidates[first], candidate_potentials[first]
    return u * scale ** (-alpha / (1.0 + alpha))


def _potential_numpy(matrix: np.ndarray, u: np.ndarray, exponent: float) -> np.ndarray:
    """NumPy twin of :func:`_potential`."""
    inside = (u > 0).all(axis=1)
    safe = np.where(u > 0, u, 1.0)
    quadratic = 0.5 * ((safe @ matrix) * safe).sum(axis=1)
    if exponent == 1.0:
        utility = np.log(safe).sum(axis=1)
    else:
        utility = (safe ** (1.0 - exponent) / (1.0 - exponent)).sum(axis=1)
    return np.where(inside, quadratic - utility, np.inf)


def _potential(matrix: Tensor, u: Tensor, exponent: float) -> Tensor:
    """φ(u) = ½ uᵀAu − Σ v(uᵢ) for each row of ``u`` (shape ``(N, K)`` → ``(N,)``)."""
    # Broadcast sums, not matmuls: BLAS threading costs far more than the work at K <= 64.
    quadratic = 0.5 * ((u.unsqueeze(1) * matrix).sum(dim=2) * u).sum(dim=1)
    if exponent == 1.0:
        utility = torch.log(u).sum(dim=1)
    else:
        power = 1.0 - exponent
        utility = (u.pow(power) / power).sum(dim=1)
    # Outside u > 0 the potential is +inf (NaN from log or pow of negatives would slip past Armijo).
    inside = (u > 0).all(dim=1)
    return torch.where(inside, quadratic - utility, torch.full_like(quadratic, math.inf))


def _relative_residual(matrix: Tensor, u: Tensor, exponent: float) -> Tensor:
    target = u.pow(-exponent)
    return torch.linalg.vector_norm(matrix @ u - target) / torch.linalg.vector_norm(target)


def fairgrad_residual(gram: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """The relative residual ``‖G Gᵀ w − w^(-1/α)‖ / ‖w^(-1/α)‖`` of the FairGrad system."""
    gram64 = gram.to(torch.float64)
    w64 = weights.to(torch.float64)
    return _relative_residual(gram64, w64, 1.0 / alpha)


def fairgrad_weights_least_squares(gram: Tensor, alpha: float) -> Tensor:
    """The paper's supervised solver: ``scipy.optimize.least_squares`` on the CPU (syncs)."""
    import numpy as np
    from scipy.optimize import least_squares

    matrix = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    num_tasks = matrix.shape[0]

    def residual(x: np.ndarray) -> np.ndarray:
        return matrix @ x - np.power(x, -1.0 / alpha)

    result = least_squares(residual, np.full(num_tasks, 1.0 / num_tasks), bounds=(0, np.inf))
    return torch.as_tensor(result.x, dtype=gram.dtype).to(gram.device)


def fairgrad_weights_sgd(
    gram: Tensor,
    alpha: float,
    *,
    steps: int = 20,
    lr: float = 0.1,
    momentum: float = 0.5,
    max_grad_norm: float = 1.0,
    floor: float = 1e-8,
) -> Tensor:
    """The paper's RL solver, reproduced: 20 SGD steps on ``‖G Gᵀ w − (1/(w+1e-8))^(1/α)‖²``.

    Starts from ``w = 1/K``; each step clips the gradient norm at 1.0, takes an SGD step with
    momentum 0.5 and learning rate 0.1, and clamps ``w`` at 1e-8; the iterate with the lowest
    objective seen before a step is returned. It does not solve the system (it is 20 first-order
    steps on a badly scaled problem); it is here to reproduce the published RL numbers. Written
    with tensor ops only, so it runs on any device without host synchronisation.
    """
    matrix = gram.detach().to(torch.float32)
    num_tasks = matrix.shape[0]
    w = torch.full((num_tasks,), 1.0 / num_tasks, dtype=matrix.dtype, device=matrix.device)
    velocity = torch.zeros_like(w)
    best_w = w.clone()
    best_objective = torch.tensor(math.inf, dtype=matrix.dtype, device=matrix.device)
    for step in range(steps):
        target = (1.0 / (w + floor)).pow(1.0 / alpha)
        residual = matrix @ w - target
        objective = residual.square().sum()
        improved = objective < best_objective
        best_w = torch.where(improved, w, best_w)
        best_objective = torch.where(improved, objective, best_objective)
        # d/dw ‖A w − (w + ε)^(-1/α)‖² = 2 (A + (1/α) diag((w + ε)^(-1/α - 1)))ᵀ r
        jacobian_diag = (1.0 / alpha) * (w + floor).pow(-1.0 / alpha - 1.0)
        gradient = 2.0 * (matrix.T @ residual + jacobian_diag * residual)
        gradient = gradient * torch.clamp(max_grad_norm / (gradient.norm() + 1e-6), max=1.0)
        # torch.optim.SGD's momentum: the first step uses the gradient itself.
        velocity = gradient if step == 0 else momentum * velocity + gradient
        w = torch.clamp(w - lr * velocity, min=floor)
    return best_w.to(gram.dtype)
