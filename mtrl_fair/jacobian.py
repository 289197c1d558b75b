"""Per-task losses → per-task gradients (the Jacobian) → one combined ``.grad``.

A combiner (:mod:`mtrl_fair.combiners`) is pure maths on a ``(K, P)`` Jacobian. This module is the
only place that produces that Jacobian from K task losses; with
:mod:`mtrl_fair.combined_grad`, which writes the combined direction into the parameters' ``.grad``,
it lets any ``torch.optim`` optimiser take the step.

Two ways to get the per-task gradients:

* **Functional (fast) path**, :func:`per_task_gradients`: the loss of one task is written as a pure
  function ``loss_fn(params, one_task_batch) -> scalar`` and ``torch.func.vmap`` maps
  ``torch.func.grad_and_value`` over the leading (task) dimension of the batch. One batched forward
  and one batched backward give all K gradients at once.
* **Generic path**, :func:`per_task_jacobian`: from ``(K,)`` losses already computed by any model,
  one batched backward (``torch.autograd.grad(..., is_grads_batched=True)``) with the rows of the
  identity as cotangents. It falls back to K backward passes only if the batched call raises.

Which to use: when the K tasks share one batched forward (the usual multi-task SAC update), the
generic path still does the arithmetic of K backward passes through the whole batch (each task's
cotangent is zero outside its own samples, but the batched backward does not know it); it only
saves the launches. The functional path differentiates each task on its own samples, so its cost
does not grow with K. Prefer the functional path in the agent; the generic one is for models that
cannot be written as a per-task function.

:func:`~mtrl_fair.combined_grad.write_combined_grad` then flattens the gradients of the *shared*
parameters to ``(K, P)``, asks the combiner for a direction and writes it into ``.grad``. *Task-specific* parameters (a
per-task temperature ``log_alpha`` of shape ``(K,)``, per-task heads…) receive the plain sum of
their per-task gradients: each task only touches its own slice, so nothing needs combining.

:func:`backward_per_task` (generic) and :func:`backward_per_task_func` (functional) chain the two
steps. With the ``mean`` combiner the functional front door skips the per-task gradients: the mean
of the task gradients is the gradient of the mean loss, one backward pass. None of this reads tensor values back to the host, so an update runs under
``torch.cuda.set_sync_debug_mode("error")`` (as long as the loss and the combiner do too).

Example (functional path)::

    params = dict(critic.named_parameters())

    def loss_fn(params, batch):  # one task's batch, without the task dimension
        q = torch.func.functional_call(critic, params, (batch.obs, batch.action))
        return F.mse_loss(q, batch.target)

    stats = backward_per_task_func(loss_fn, params, task_batch, combiner)  # task_batch: (K, B, ...)
    optimizer.step()
    combiner.after_step(stats.losses)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from mtrl_fair.combined_grad import CombinedGradient, set_grad, write_combined_grad
from mtrl_fair.combiners.base import Combiner
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.gram import gradient_diagnostics, gram_diagnostics, mean_pairwise_cosine
from mtrl_fair.layer_jacobian import layer_plan, layer_task_gradients

__all__ = [
    "CombinedGradient",
    "backward_per_task",
    "backward_per_task_func",
    "gradient_diagnostics",
    "gram_diagnostics",
    "mean_pairwise_cosine",
    "per_task_gradients",
    "per_task_jacobian",
    "write_combined_grad",
]

Randomness = Literal["error", "different", "same"]


# --------------------------------------------------------------------------------------------------
# Functional path: vmap(grad_and_value) over the task dimension.
# --------------------------------------------------------------------------------------------------


@overload
def per_task_gradients(
    loss_fn: Callable[[dict[str, Tensor], Any], Tensor],
    params: Mapping[str, Tensor],
    task_batch: Any,
    *,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: Literal[False] = False,
) -> tuple[Tensor, dict[str, Tensor]]: ...


@overload
def per_task_gradients(
    loss_fn: Callable[[dict[str, Tensor], Any], tuple[Tensor, Any]],
    params: Mapping[str, Tensor],
    task_batch: Any,
    *,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: Literal[True],
) -> tuple[Tensor, dict[str, Tensor], Any]: ...


def per_task_gradients(
    loss_fn: Callable[[dict[str, Tensor], Any], Any],
    params: Mapping[str, Tensor],
    task_batch: Any,
    *,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: bool = False,
) -> tuple[Tensor, dict[str, Tensor]] | tuple[Tensor, dict[str, Tensor], Any]:
    """The K task losses and the gradient of each w.r.t. every tensor of ``params``, in one pass.

    Args:
        loss_fn: ``loss_fn(params, one_task_batch) -> scalar loss`` for a single task, where
            ``one_task_batch`` is ``task_batch`` without its leading task dimension. Write it with
            ``torch.func.functional_call(module, params, ...)``. With ``has_aux=True`` it returns
            ``(loss, aux)`` instead, ``aux`` being any pytree of tensors.
        params: the tensors to differentiate, by name (e.g. ``dict(module.named_parameters())``).
            They are shared by all tasks (not batched) and are detached here: the results carry no
            autograd graph.
        task_batch: a tensor or a pytree (tuple, NamedTuple, dict, list) of tensors, each with the
            task dimension K first. Pass ``torch.arange(K)`` inside it if ``loss_fn`` must know its
            task index. To pick a task's slice write ``log_alpha.index_select(0, task.reshape(1))``:
            plain indexing with the 0-d ``task`` tensor calls ``.item()``, which vmap rejects.
        chunk_size: map over at most this many tasks at a time (``vmap(chunk_size=...)``) to bound
            the memory of the per-task activations and gradients, e.g. for K = 50 on a small GPU.
            ``None`` maps over all K at once (fastest).
        randomness: how random operations inside ``loss_fn`` (dropout, ``torch.randn``, sampling
            actions with ``rsample``) behave across tasks, as in ``torch.func.vmap``: ``"different"``
            (the default) draws independent noise per task, like K separate calls would;
            ``"same"`` shares one draw; ``"error"`` raises on any random op.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
        ``(losses, grads)``, or ``(losses, grads, aux)`` with ``has_aux``: ``losses`` of shape
        ``(K,)``, ``grads[name]`` of shape ``(K, *params[name].shape)`` with row ``k`` the gradient
        of task ``k``'s loss, ``aux`` with a leading K dimension on every tensor.
    """
    detached = {name: tensor.detach() for name, tensor in params.items()}
    batched = vmap(
        grad_and_value(loss_fn, has_aux=has_aux),
        in_dims=(None, 0),
        randomness=randomness,
        chunk_size=chunk_size,
    )
    grads, value = batched(detached, task_batch)
    if has_aux:
        losses, aux = value
        return losses, grads, aux
    return value, grads


# --------------------------------------------------------------------------------------------------
# Generic path: one batched backward from already computed losses.
# --------------------------------------------------------------------------------------------------


def per_task_jacobian(
    losses: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False
) -> list[Tensor]:
    """The gradient of each of the ``(K,)`` ``losses`` w.r.t. each of ``params``, from their graph.

    It runs ONE batched backward pass, ``torch.autograd.grad(losses, params, grad_outputs=I_K,
    is_grads_batched=True)``, which vmaps the backward over the K rows of the identity. Its
    arithmetic is that of K backward passes through the graph shared by the losses (see the module
    docstring): prefer :func:`per_task_gradients` when the loss can be written per task.

    Fallback: a few operators have no batching rule for the backward (custom autograd functions,
    some in-place ops). If the batched call raises, a warning is emitted and the rows are computed
    with K ordinary backward passes instead, which always works but is slower. To make that
    fallback possible the batched call keeps the graph's saved tensors; they are released as usual
    once ``losses`` is no longer referenced.

    Args:
        losses: the ``(K,)`` task losses, attached to the autograd graph.
        params: the tensors to differentiate (leaves or not). Those that the losses do not depend
            on, or that do not require grad, get zero gradients.
        retain_graph: keep the graph for another backward pass afterwards.

    Returns:
        One ``(K, *p.shape)`` tensor per parameter ``p``, with row ``k`` the gradient of
        ``losses[k]``.
    """
    if losses.ndim != 1:
        raise ValueError(f"losses must be a (K,) vector of task losses, got shape {tuple(losses.shape)}")
    num_tasks = losses.shape[0]
    if not losses.requires_grad:
        raise ValueError("losses do not require grad: compute them from parameters that require grad")
    params = list(params)
    diff_index = [i for i, p in enumerate(params) if p.requires_grad]
    diff_params = [params[i] for i in diff_index]
    rows: Sequence[Tensor | None] = ()
    if diff_params:
        eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
        try:
            rows = torch.autograd.grad(
                losses,
                diff_params,
                grad_outputs=eye,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        except (RuntimeError, NotImplementedError) as error:
            warnings.warn(
                f"the batched backward failed ({type(error).__name__}: {error}); falling back to "
                f"{num_tasks} separate backward passes",
                RuntimeWarning,
                stacklevel=2,
            )
            rows = _jacobian_by_loop(losses, diff_params, retain_graph=retain_graph)
    found: dict[int, Tensor] = {i: row for i, row in zip(diff_index, rows, strict=True) if row is not None}
    return [
        found[i] if i in found else param.new_zeros((num_tasks, *param.shape))
        for i, param in enumerate(params)
    ]


def _jacobian_by_loop(losses: Tensor, params: list[Tensor], *, retain_graph: bool) -> list[Tensor | None]:
    """K ordinary backward passes, one per task: the fallback of :func:`per_task_jacobian`."""
    num_tasks = losses.shape[0]
    per_task = [
        torch.autograd.grad(
            losses[k], params, retain_graph=retain_graph or k < num_tasks - 1, allow_unused=True
        )
        for k in range(num_tasks)
    ]
    stacked: list[Tensor | None] = []
    for j, param in enumerate(params):
        if all(task[j] is None for task in per_task):
            stacked.append(None)
        else:
            stacked.append(torch.stack([torch.zeros_like(param) if t[j] is None else t[j] for t in per_task]))
    return stacked


# --------------------------------------------------------------------------------------------------
# Front doors.
# --------------------------------------------------------------------------------------------------


def backward_per_task(
    losses: Tensor,
    shared: Sequence[Tensor],
    combiner: Combiner,
    *,
    task_params: Sequence[Tensor] = (),
    diagnostics: bool = False,
    retain_graph: bool = False,
) -> CombinedGradient:
    """The combined counterpart of ``losses.mean().backward()``, for any model (generic path).

    Differentiates the ``(K,)`` ``losses`` with one batched backward (:func:`per_task_jacobian`),
    writes the combined direction into the ``.grad`` of the ``shared`` parameters and the summed
    per-task gradients into the ``.grad`` of the ``task_params``.
    """
    shared, task_params = list(shared), list(task_params)
    grads = per_task_jacobian(losses, [*shared, *task_params], retain_graph=retain_graph)
    return write_combined_grad(
        combiner,
        shared,
        grads[: len(shared)],
        losses=losses,
        task_params=task_params,
        task_grads=grads[len(shared) :],
        diagnostics=diagnostics,
    )


@overload
def backward_per_task_func(
    loss_fn: Callable[[dict[str, Tensor], Any], Tensor],
    params: Mapping[str, Tensor],
    task_batch: Any,
    combiner: Combiner,
    *,
    shared_names: Collection[str] | None = None,
    diagnostics: bool = False,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: Literal[False] = False,
    batched_loss: Callable[[], Tensor] | None = None,
    module: nn.Module | None = None,
) -> CombinedGradient: ...


@overload
def backward_per_task_func(
    loss_fn: Callable[[dict[str, Tensor], Any], tuple[Tensor, Any]],
    params: Mapping[str, Tensor],
    task_batch: Any,
    combiner: Combiner,
    *,
    shared_names: Collection[str] | None = None,
    diagnostics: bool = False,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: Literal[True],
    batched_loss: Callable[[], tuple[Tensor, Any]] | None = None,
    module: nn.Module | None = None,
) -> tuple[CombinedGradient, Any]: ...


@overload
def backward_per_task_func(
    loss_fn: Callable[[dict[str, Tensor], Any], Any],
    params: Mapping[str, Tensor],
    task_batch: Any,
    combiner: Combiner,
    *,
    shared_names: Collection[str] | None = None,
    diagnostics: bool = False,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: bool,
    batched_loss: Callable[[], Any] | None = None,
    module: nn.Module | None = None,
) -> CombinedGradient | tuple[CombinedGradient, Any]: ...


def backward_per_task_func(
    loss_fn: Callable[[dict[str, Tensor], Any], Any],
    params: Mapping[str, Tensor],
    task_batch: Any,
    combiner: Combiner,
    *,
    shared_names: Collection[str] | None = None,
    diagnostics: bool = False,
    chunk_size: int | None = None,
    randomness: Randomness = "different",
    has_aux: bool = False,
    batched_loss: Callable[[], Any] | None = None,
    module: nn.Module | None = None,
) -> CombinedGradient | tuple[CombinedGradient, Any]:
    """The combined counterpart of ``losses.mean().backward()`` on the functional (vmap) path.

    Computes the per-task losses and gradients with :func:`per_task_gradients`, then writes the
    ``.grad`` of every tensor of ``params`` with :func:`write_combined_grad`.

    Args:
        loss_fn, params, task_batch, chunk_size, randomness, has_aux: as in
            :func:`per_task_gradients`. ``params`` must hold the actual parameters (their ``.grad``
            is written). With ``has_aux`` the result is ``(combined, aux)``.
        combiner: the gradient combiner for the shared parameters.
        shared_names: the names in ``params`` shared by all tasks, combined by ``combiner``; every
            other name is task-specific and gets the sum of its per-task gradients. ``None``
            (default): all of ``params`` are shared.
        diagnostics: also return norms and cosines of the shared task gradients.
        batched_loss: optional, ``batched_loss()`` returns what ``vmap(loss_fn)`` would (the
            ``(K,)`` losses, with ``has_aux`` also the aux) for the whole ``(K, B, ...)`` batch,
            computed with the modules themselves. The ``mean`` shortcut uses it instead of
            ``vmap`` and ``functional_call``, whose Python overhead is most of a small update's
            time on a GPU; there it may also return ``(..., K)`` losses, whose leading dims are
            independent runs (a pack), each given its own mean.

    With the ``mean`` combiner, no ``diagnostics`` and every parameter shared, the per-task
    gradients are never formed: the gradient of the mean of the task losses is the same direction,
    from one batched forward and one backward pass.
    """
    names = list(params)
    shared_set = set(names) if shared_names is None else set(shared_names)
    unknown = shared_set - set(names)
    if unknown:
        raise ValueError(f"shared_names {sorted(unknown)} are not in params ({names})")
    if isinstance(combiner, Mean) and not diagnostics and len(shared_set) == len(names):
        return _backward_mean(loss_fn, params, task_batch, chunk_size, randomness, has_aux, batched_loss)
    aux = None
    if module is not None and batched_loss is not None and (plan := layer_plan(module, params)) is not None:
        compute_losses = batched_loss

        def with_aux() -> tuple[Tensor, Any]:
            value = compute_losses()
            return value if has_aux else (value, None)

        losses, grads, aux = layer_task_gradients(with_aux, module, plan)
    elif has_aux:
        losses, grads, aux = per_task_gradients(
            loss_fn, params, task_batch, chunk_size=chunk_size, randomness=randomness, has_aux=True
        )
    else:
        losses, grads = per_task_gradients(
            loss_fn, params, task_batch, chunk_size=chunk_size, randomness=randomness
        )
    shared = [name for name in names if name in shared_set]
    task = [name for name in names if name not in shared_set]
    combined = write_combined_grad(
        combiner,
        [params[name] for name in shared],
        [grads[name] for name in shared],
        losses=losses,
        task_params=[params[name] for name in task],
        task_grads=[grads[name] for name in task],
        diagnostics=diagnostics,
    )
    return (combined, aux) if has_aux else combined


def _backward_mean(
    loss_fn: Callable[[dict[str, Tensor], Any], Any],
    params: Mapping[str, Tensor],
    task_batch: Any,
    chunk_size: int | None,
    randomness: Randomness,
    has_aux: bool,
    batched_loss: Callable[[], Any] | None,
) -> CombinedGradient | tuple[CombinedGradient, Any]:
    """The ``mean`` combiner's direction as the gradient of the mean task loss (one backward pass)."""
    if batched_loss is not None:
        value = batched_loss()
    else:
        value = vmap(loss_fn, in_dims=(None, 0), randomness=randomness, chunk_size=chunk_size)(
            dict(params), task_batch
        )
    losses, aux = value if has_aux else (value, None)
    tensors = list(params.values())
    # Only these tensors are differentiated (not, e.g., the critic that an actor loss reads), and
    # their .grad is overwritten, as on the per-task path. Leading dims of the (..., K) losses are
    # independent runs (a pack): each run's mean, summed, gives every run its own mean gradient.
    grads = torch.autograd.grad(losses.mean(dim=-1).sum(), tensors, allow_unused=True)
    with torch.no_grad():
        for param, grad in zip(tensors, grads, strict=True):
            set_grad(param, torch.zeros_like(param) if grad is None else grad)
    num_tasks = losses.shape[-1]
    combined = CombinedGradient(losses.detach(), losses.new_full(losses.shape, 1.0 / num_tasks).detach())
    return (combined, aux) if has_aux else combined
