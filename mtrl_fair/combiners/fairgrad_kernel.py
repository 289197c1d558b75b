"""FairGrad's Newton solve as one Triton kernel, for Gram matrices on a CUDA device.

The tensor-op solver in :mod:`mtrl_fair.combiners.fairgrad` launches a few dozen tiny kernels per
Newton iteration and must run a fixed number of iterations on the GPU (stopping early would read
the residual back to the host). Here the whole solve runs in a single program of one kernel: the
K×K matrix lives in registers, each Newton system is solved by Gauss-Jordan elimination (the
Hessian is symmetric positive definite, so no pivoting is needed), and the loop stops as soon as
the residual reaches round-off, without the host ever looking. One launch, no host
synchronisation, capturable in a CUDA graph.

The maths is the same as :func:`mtrl_fair.combiners.fairgrad.fairgrad_weights` (same scaling,
ridge, start point, fraction to the boundary and Armijo line search with round-off allowance).
Triton is imported lazily: on machines without it (CPU-only installs) :func:`available` is False
and the tensor-op solver is used.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

MAX_TASKS = 64
"""Largest K solved by the kernel (the K×K matrix must fit in one program's registers)."""


try:  # Triton ships with CUDA builds of torch; CPU-only installs go without the kernel.
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def available() -> bool:
    """Whether Triton is importable and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Triton's CPU interpreter (used by the tests without a GPU) has no libdevice.

        @triton.jit
        def power_of(x, y):
            return tl.exp(y * tl.log(x))

        @triton.jit
        def log_of(x):
            return tl.log(x)

    else:
        # libdevice: tl.exp and tl.log may take float32 fast paths, too coarse for this solve.

        @triton.jit
        def power_of(x, y):
            return libdevice.pow(x, y)

        @triton.jit
        def log_of(x):
            return libdevice.log(x)

    @triton.jit
    def potential_of(a, u, valid, exponent, LOG_UTILITY: tl.constexpr):
        # φ(u) = ½ uᵀAu − Σ v(uᵢ) over the valid coordinates; +inf outside u > 0.
        positive = tl.min(tl.where(valid, u, 1.0), axis=0) > 0.0
        safe = tl.where(valid & (u > 0.0), u, 1.0)
        au = tl.sum(a * safe[None, :], axis=1)
        quadratic = 0.5 * tl.sum(tl.where(valid, safe * au, 0.0), axis=0)
        if LOG_UTILITY:
            utility = tl.sum(tl.where(valid, log_of(safe), 0.0), axis=0)
        else:
            power = 1.0 - exponent
            utility = tl.sum(tl.where(valid, power_of(safe, power) / power, 0.0), axis=0)
        return tl.where(positive, quadratic - utility, float("inf"))

    @triton.jit
    def residual_of(a, u, valid, exponent):
        # ‖A u − u^-p‖ / ‖u^-p‖ over the valid coordinates.
        target = tl.where(valid, power_of(u, -exponent), 0.0)
        au = tl.sum(a * u[None, :], axis=1)
        gradient = tl.where(valid, au - target, 0.0)
        return tl.sqrt(tl.sum(gradient * gradient, axis=0)) / tl.sqrt(tl.sum(target * target, axis=0))

    @triton.jit
    def fairgrad_newton_kernel(
        gram_ptr,
        out_ptr,
        params_ptr,
        num_tasks,
        stride_row,
        stride_col,
        max_iter,
        LOG_UTILITY: tl.constexpr,
        BLOCK: tl.constexpr,
        LINE_SEARCH_STEPS: tl.constexpr,
        ARMIJO: tl.constexpr,
        ROUND_OFF: tl.constexpr,
        TO_BOUNDARY: tl.constexpr,
    ):
        # Scalars arrive through a float64 tensor: Triton passes Python floats as float32.
        exponent = tl.load(params_ptr)
        ridge = tl.load(params_ptr + 1)
        out_power = tl.load(params_ptr + 2)
        tolerance = tl.load(params_ptr + 3)
        idx = tl.arange(0, BLOCK)
        rows = idx[:, None]
        cols = idx[None, :]
        valid = idx < num_tasks
        inside = (rows < num_tasks) & (cols < num_tasks)
        is_diag = rows == cols
        gram = tl.load(gram_ptr + rows * stride_row + cols * stride_col, mask=inside, other=0.0)
        gram_t = tl.load(gram_ptr + cols * stride_row + rows * stride_col, mask=inside, other=0.0)
        a = 0.5 * (gram.to(tl.float64) + gram_t.to(tl.float64))

        diag_mean = tl.sum(tl.sum(tl.where(is_diag, a, 0.0), axis=1), axis=0) / num_tasks
        scale = tl.where(diag_mean > 0.0, diag_mean, 1.0)
        # Padded coordinates get identity rows: u = 1 solves them and they never couple.
        a = a / scale + tl.where(is_diag, tl.where(rows < num_tasks, ridge, 1.0), 0.0)

        row_sums = tl.sum(tl.where(inside, a, 0.0), axis=1)
        diagonal = tl.sum(tl.where(is_diag, a, 0.0), axis=1)
        row_sums = tl.maximum(row_sums, diagonal / num_tasks)
        u = tl.where(valid, power_of(tl.where(valid, row_sums, 1.0), -1.0 / (1.0 + exponent)), 1.0)
        phi = potential_of(a, u, valid, exponent, LOG_UTILITY)

        iteration = 0
        residual = residual_of(a, u, valid, exponent)
        while (iteration < max_iter) & (residual > tolerance):
            target = tl.where(valid, power_of(u, -exponent), 1.0)
            au = tl.sum(a * u[None, :], axis=1)
            gradient = tl.where(valid, au - target, 0.0)
            residual = tl.sqrt(tl.sum(gradient * gradient, axis=0)) / tl.sqrt(
                tl.sum(tl.where(valid, target * target, 0.0), axis=0)
            )
            # Newton system H d = -∇φ, H = A + p·diag(u^(-p-1)), by Gauss-Jordan elimination.
            m = a + tl.where(is_diag, (exponent * target / u)[:, None], 0.0)
            b = -gradient
            for k in range(0, num_tasks):
                pivot_row = tl.sum(tl.where(rows == k, m, 0.0), axis=0)
                column = tl.sum(tl.where(cols == k, m, 0.0), axis=1)
                pivot = tl.sum(tl.where(idx == k, column, 0.0), axis=0)
                b_k = tl.sum(tl.where(idx == k, b, 0.0), axis=0)
                factor = tl.where(idx == k, 0.0, column / pivot)
                m = m - factor[:, None] * pivot_row[None, :]
                b = b - factor * b_k
            direction = tl.where(valid, b / tl.sum(tl.where(is_diag, m, 0.0), axis=1), 0.0)

            # Longest step keeping u > 0, then the longest halving that passes Armijo's test.
            ratio = tl.where(direction < 0.0, u / -direction, float("inf"))
            longest = tl.minimum(TO_BOUNDARY * tl.min(ratio, axis=0), 1.0)
            slope = tl.sum(gradient * direction, axis=0)
            allowance = ROUND_OFF * (tl.abs(phi) + tl.sum(tl.where(valid, u * au, 0.0), axis=0))
            step = longest
            chosen = longest * 0.5 ** (LINE_SEARCH_STEPS - 1)
            found = step < 0.0  # False, as a tensor
            for _ in tl.static_range(LINE_SEARCH_STEPS):
                candidate_phi = potential_of(a, u + step * direction, valid, exponent, LOG_UTILITY)
                accepted = (candidate_phi <= phi + ARMIJO * step * slope + allowance) & ~found
                chosen = tl.where(accepted, step, chosen)
                found = found | accepted
                step = step * 0.5
            u = u + chosen * direction
            phi = potential_of(a, u, valid, exponent, LOG_UTILITY)
            iteration += 1

        weights = u * power_of(scale, out_power)
        tl.store(out_ptr + idx, weights.to(out_ptr.dtype.element_ty), mask=valid)


def fairgrad_weights_kernel(
    gram: Tensor,
    alpha: float,
    *,
    max_iter: int,
    ridge: float,
    line_search_steps: int,
    armijo: float,
    round_off: float,
    to_boundary: float,
    tolerance: float,
) -> Tensor:
    """FairGrad weights for a CUDA Gram matrix with K <= :data:`MAX_TASKS`, in one kernel launch."""
    num_tasks = gram.shape[0]
    if not gram.is_cuda or num_tasks > MAX_TASKS:
        raise ValueError(f"the FairGrad kernel takes a CUDA Gram matrix with K <= {MAX_TASKS}")
    weights = torch.empty(num_tasks, dtype=gram.dtype, device=gram.device)
    block = max(16, triton.next_power_of_2(num_tasks))
    with torch.cuda.device(gram.device):
        fairgrad_newton_kernel[(1,)](
            gram,
            weights,
            scalar_parameters(gram.device, 1.0 / alpha, ridge, -alpha / (1.0 + alpha), tolerance),
            num_tasks,
            gram.stride(0),
            gram.stride(1),
            max_iter,
            LOG_UTILITY=alpha == 1.0,
            BLOCK=block,
            LINE_SEARCH_STEPS=line_search_steps,
            ARMIJO=armijo,
            ROUND_OFF=round_off,
            TO_BOUNDARY=to_boundary,
            num_warps=4 if block <= 32 else 8,
        )
    return weights


@functools.cache
def scalar_parameters(device: torch.device, *values: float) -> Tensor:
    """The kernel's float64 scalars, copied to the device once per set of values.

    Cached so that later calls (and CUDA graph captures, which cannot copy from the host) reuse it.
    """
    return torch.tensor(values, dtype=torch.float64, device=device)
