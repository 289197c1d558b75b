"""Per-task gradients of the shared parameters → one combined direction, written into ``.grad``.

:func:`write_combined_grad` is where a combiner meets the parameters: it hands the ``(K, P)``
per-task gradients (or, for a Gramian combiner, only their ``(K, K)`` Gram matrix) to the combiner
and writes the direction it returns into each shared parameter's ``.grad``, so that any
``torch.optim`` optimiser can take the step. Task-specific parameters get the plain sum of their
per-task gradients. How the per-task gradients are computed is :mod:`mtrl_fair.jacobian`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from mtrl_fair.combiners.base import Combiner, GramianCombiner
from mtrl_fair.gram import gram_diagnostics, gram_of

__all__ = ["CombinedGradient", "combine_rows", "grad_buffer", "set_grad", "write_combined_grad"]


class CombinedGradient(NamedTuple):
    """What one combined backward produced (all tensors detached, on the parameters' device)."""

    losses: Tensor
    """The ``(K,)`` task losses."""
    weights: Tensor
    """The ``(K,)`` effective task weights the combiner used (``direction == weights @ J``)."""
    grad_norms: Tensor | None = None
    """The ``(K,)`` norms of the task gradients w.r.t. the shared parameters (with ``diagnostics``)."""
    cosine: Tensor | None = None
    """The ``(K, K)`` pairwise cosine similarities of the task gradients (with ``diagnostics``).

    A task whose gradient is exactly zero has cosine 0 with every task, itself included.
    """


def write_combined_grad(
    combiner: Combiner,
    shared: Sequence[Tensor],
    shared_grads: Sequence[Tensor],
    *,
    losses: Tensor,
    task_params: Sequence[Tensor] = (),
    task_grads: Sequence[Tensor] = (),
    diagnostics: bool = False,
) -> CombinedGradient:
    """Combine per-task gradients and write the result into ``.grad`` (overwriting it).

    Args:
        combiner: maps the ``(K, P)`` Jacobian of the shared parameters to a ``(P,)`` direction.
            Loss-based combiners (``combiner.requires_losses``) also get the detached ``losses``.
        shared: the parameters shared by all tasks.
        shared_grads: for each shared parameter ``p``, its per-task gradients, ``(K, *p.shape)``.
        losses: the ``(K,)`` task losses (detached here).
        task_params: task-specific parameters (e.g. a per-task ``log_alpha`` of shape ``(K,)``).
        task_grads: for each task-specific parameter ``p``, its per-task gradients
            ``(K, *p.shape)``; ``p.grad`` becomes their sum over tasks.
        diagnostics: also return the task-gradient norms and pairwise cosines (one extra ``K×K×P``
            product).

    Returns:
        The losses, the combiner's task weights and, with ``diagnostics``, norms and cosines.
    """
    if len(shared) != len(shared_grads):
        raise ValueError(f"got {len(shared)} shared parameters but {len(shared_grads)} gradients")
    if len(task_params) != len(task_grads):
        raise ValueError(f"got {len(task_params)} task-specific parameters but {len(task_grads)} gradients")
    if not shared:
        raise ValueError("write_combined_grad needs at least one shared parameter")
    if losses.ndim != 1:
        raise ValueError(f"losses must be a (K,) vector, got shape {tuple(losses.shape)}")
    num_tasks = losses.shape[0]
    for param, grad in zip([*shared, *task_params], [*shared_grads, *task_grads], strict=True):
        if tuple(grad.shape) != (num_tasks, *param.shape):
            raise ValueError(
                f"a per-task gradient must have shape (K, *param.shape) = {(num_tasks, *param.shape)}, "
                f"got {tuple(grad.shape)}"
            )
    with torch.no_grad():
        outputs = [grad_buffer(param).view(-1) for param in shared]
        for param, grad in zip(task_params, task_grads, strict=True):
            set_grad(param, grad.detach().sum(dim=0))
    rows = [grad.detach().reshape(num_tasks, -1) for grad in shared_grads]
    return combine_rows(combiner, rows, outputs, losses=losses, diagnostics=diagnostics)


def combine_rows(
    combiner: Combiner,
    rows: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    losses: Tensor,
    diagnostics: bool = False,
) -> CombinedGradient:
    """Combine per-task gradient blocks and write the direction into ``outputs``.

    ``rows[i]`` is a ``(K, Pᵢ)`` block of the Jacobian (the per-task gradients of one shared
    parameter, flattened), ``outputs[i]`` the ``(Pᵢ,)`` tensor that receives that block's part of
    the direction (a parameter's ``.grad``, or its slice in a pack of runs).
    """
    losses = losses.detach()
    gram = None
    if isinstance(combiner, GramianCombiner):
        # The Gram matrix is a sum of per-parameter Gram matrices, and the direction of each
        # parameter is its own weighted sum of rows: the (K, P) Jacobian is never assembled, which
        # saves copying K×P values (the largest memory traffic of the whole combine).
        gram = gram_of(rows)
        weights = combiner.weights(gram).to(rows[0].dtype)
        with torch.no_grad():
            for block, output in zip(rows, outputs, strict=True):
                torch.mv(block.t(), weights, out=output)  # straight into .grad: no copy
    else:
        jacobian = torch.cat(list(rows), dim=1)
        combination = combiner.combine(jacobian, losses if combiner.requires_losses else None)
        weights = combination.weights
        with torch.no_grad():
            for direction, output in zip(
                combination.direction.split([block.shape[1] for block in rows]), outputs, strict=True
            ):
                output.copy_(direction)
    norms = cosine = None
    if diagnostics:
        norms, cosine = gram_diagnostics(gram if gram is not None else gram_of(rows))
    return CombinedGradient(losses, weights.detach(), norms, cosine)


def set_grad(param: Tensor, value: Tensor) -> None:
    """``param.grad = value``, reusing an existing ``.grad`` buffer (stable addresses)."""
    grad_buffer(param).copy_(value)


def grad_buffer(param: Tensor) -> Tensor:
    """``param.grad``, made a contiguous buffer of ``param``'s shape if it is not one already."""
    if param.grad is None or not param.grad.is_contiguous() or param.grad.shape != param.shape:
        param.grad = torch.empty_like(param, memory_format=torch.contiguous_format)
    return param.grad
