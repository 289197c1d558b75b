"""Per-task gradients of linear layers from one ordinary backward pass.

For a linear layer ``z = x Wᵀ + b`` the gradient of a loss is ``Σ_rows δ xᵀ`` (and ``Σ_rows δ``
for the bias), with ``δ = ∂loss/∂z`` the gradient at the layer's output. When the K task losses
each depend only on their own task's rows of the batch (``(K, B, ...)``, task-major), one backward
pass of their sum gives every row's ``δ`` for its own task, and task ``k``'s gradient is the sum
over its rows only: a batched product ``δ_kᵀ x_k`` over the K tasks. So the per-task Jacobian
costs the batched forward and backward of the plain mean update, with the weight-gradient product
batched over tasks, instead of ``torch.func.vmap`` over a per-task loss function, whose batching
rules add hundreds of small operations (each a kernel launch on a GPU).

A layer qualifies if it is an ``nn.Linear``, or if it has a ``task_gradients(inputs, output_grads,
num_tasks, out=None)`` method that returns the per-task gradient of each of its own parameters by
name, written into ``out[name]`` when given (the twin critic's ensemble layer does). :func:`layer_task_gradients` takes the module whose parameters
are to be differentiated; every parameter must belong to a qualifying layer
(:func:`supports_layer_gradients` says whether it does), otherwise use the vmap path of
:mod:`mtrl_fair.jacobian`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerPlan",
    "layer_plan",
    "layer_task_gradients",
    "linear_task_gradients",
    "supports_layer_gradients",
]


def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The qualifying layers of ``module``, by their prefix in ``module.named_parameters()``."""
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) or callable(getattr(layer, "task_gradients", None))
    ]


def supports_layer_gradients(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` belongs to exactly one layer whose per-task gradient is known."""
    owned = [id(p) for _, layer in _layers(module) for p in layer.parameters(recurse=False)]
    everything = [id(p) for p in module.parameters()]
    return len(owned) == len(set(owned)) and set(owned) == set(everything)


@dataclass
class LayerPlan:
    """The qualifying layers of a module, and the buffers its per-task gradients are written into.

    The buffers are reused from one call to the next: on a CPU a fresh multi-megabyte tensor costs
    a page fault per 4 KiB on first touch (more than the products themselves), and on a GPU the
    addresses stay the same, as a CUDA graph needs.
    """

    layers: list[tuple[str, nn.Module]]
    buffers: dict[str, Tensor] = field(default_factory=dict)


# Walking a module tree costs more host time than a small update's kernels take on a GPU: the plan
# of a module is made once, and made again only when the parameters asked for change.
_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[str, int], ...], LayerPlan | None]] = (
    weakref.WeakKeyDictionary()
)


def layer_plan(module: nn.Module, params: Mapping[str, Tensor]) -> LayerPlan | None:
    """``module``'s qualifying layers when ``params`` are exactly its parameters and every one of them
    belongs to such a layer; ``None`` when the per-task gradients must come from elsewhere (vmap)."""
    key = tuple((name, id(tensor)) for name, tensor in params.items())
    cached = _PLANS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    own = tuple((name, id(tensor)) for name, tensor in module.named_parameters())
    plan = LayerPlan(_layers(module)) if own == key and supports_layer_gradients(module) else None
    _PLANS[module] = (key, plan)
    return plan


def linear_task_gradients(
    inputs: Tensor, output_grads: Tensor, num_tasks: int, out: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Per-task gradients of an ``nn.Linear``'s ``weight`` ``(K, out, in)`` and ``bias`` ``(K, out)``.

    ``inputs`` and ``output_grads`` have the rows of all tasks in their leading dimensions,
    task-major (``(K, B, ·)`` or ``(K·B, ·)``). ``out``: tensors to write the results into.
    """
    x = inputs.reshape(num_tasks, -1, inputs.shape[-1])
    delta = output_grads.reshape(num_tasks, -1, output_grads.shape[-1])
    if out is None:
        return {"weight": torch.bmm(delta.transpose(1, 2), x), "bias": delta.sum(dim=1)}
    return {
        "weight": torch.bmm(delta.transpose(1, 2), x, out=out["weight"]),
        "bias": torch.sum(delta, dim=1, out=out["bias"]),
    }


def layer_task_gradients(
    batched_loss: Callable[[], tuple[Tensor, Any]], module: nn.Module, plan: LayerPlan | None = None
) -> tuple[Tensor, dict[str, Tensor], Any]:
    """The ``(K,)`` losses, the per-task gradient of every parameter of ``module`` and the aux output.

    ``batched_loss()`` computes the K task losses on the whole ``(K, B, ...)`` batch with
    ``module`` itself (and any other module, whose parameters are not differentiated), and returns
    ``(losses, aux)``. The gradients are ``{name: (K, *param.shape)}`` with the names of
    ``module.named_parameters()``, detached. ``plan``, from :func:`layer_plan`: the layers, and
    buffers that receive the gradients (overwritten by the next call with the same plan, so read
    them first); by default a fresh plan of every qualifying layer of ``module``.
    """
    plan = LayerPlan(_layers(module)) if plan is None else plan
    records: list[tuple[str, nn.Module, Tensor, Tensor]] = []

    def record(prefix: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            records.append((prefix, layer, args[0], output))

        return hook

    handles = [layer.register_forward_hook(record(prefix)) for prefix, layer in plan.layers]
    try:
        losses, aux = batched_loss()
    finally:
        for handle in handles:
            handle.remove()
    num_tasks = losses.shape[-1]  # (K,) losses, or (R, K) for a pack of runs
    # Gradients at the layers' outputs only: the weight-gradient products of an ordinary backward
    # pass are not computed, the batched ones below replace them.
    output_grads = torch.autograd.grad(losses.sum(), [output for *_, output in records], allow_unused=True)
    grads: dict[str, Tensor] = {}
    for (prefix, layer, inputs, output), delta in zip(records, output_grads, strict=True):
        if delta is None:
            delta = torch.zeros_like(output)
        keys = {name: f"{prefix}.{name}" if prefix else name for name, _ in layer.named_parameters(recurse=False)}
        rule = getattr(layer, "task_gradients", None)
        rule = rule if callable(rule) else linear_task_gradients
        if any(key in grads for key in keys.values()):  # a layer called twice: add its second share
            for name, grad in rule(inputs.detach(), delta, num_tasks).items():
                grads[keys[name]].add_(grad)
            continue
        out = {name: plan.buffers[key] for name, key in keys.items() if key in plan.buffers}
        if len(out) == len(keys):
            results = rule(inputs.detach(), delta, num_tasks, out=out)
        else:  # the first call: the rule's results become the buffers
            results = rule(inputs.detach(), delta, num_tasks)
            plan.buffers.update({keys[name]: grad for name, grad in results.items()})
        for name, grad in results.items():
            grads[keys[name]] = grad
    for prefix, layer in plan.layers:  # a layer the loss did not call
        for name, param in layer.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            if key not in grads:
                per_run = (param.numel() // losses.shape[0],)  # in a pack, each run's share, flat
                grads[key] = param.new_zeros((*losses.shape, *(param.shape if losses.ndim == 1 else per_run)))
    return losses.detach(), grads, aux

