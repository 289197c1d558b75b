"""One SAC update of R packed runs: the same maths as :class:`~mtrl_fair.agents.sac_update.SACUpdate`,
every tensor with the run first, each run combined with its own combiner.

The losses, the optimiser steps (one fused Adam over the stacked parameters is R independent Adams,
since Adam is elementwise), the temperatures and the target networks are those of the solo update,
run on ``(R, K, B, ...)`` batches. What differs is per run:

- the noise, drawn from each run's own generator (as the run draws it alone);
- the combination: the per-task gradients of every run come from one backward pass of the packed
  networks (:mod:`mtrl_fair.layer_jacobian`), then each run's ``K×K`` system is solved with its own
  combiner (FairGrad with its own α) and its direction written into its slice of ``.grad``.

An update with a non-finite loss or gradient in any run is skipped for the whole pack (the fused
optimiser takes one flag); the skip counter names the runs and tasks at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtrl_fair.agents.config import MTSACConfig
from mtrl_fair.agents.numerics import SkipCounter
from mtrl_fair.agents.sac_update import SACUpdate
from mtrl_fair.combined_grad import CombinedGradient, combine_rows, grad_buffer
from mtrl_fair.combiners import Combiner
from mtrl_fair.combiners.mean import Mean
from mtrl_fair.jacobian import backward_per_task_func
from mtrl_fair.layer_jacobian import layer_plan, layer_task_gradients

__all__ = ["PackedSACUpdate"]


class PackedSACUpdate(SACUpdate):
    """The update step of :class:`~mtrl_fair.agents.packed.PackedMTSAC`, on the pack's own tensors.

    Args:
        member_combiners: for each loss name, the R runs' combiners, in run order.
        generators: the R runs' random generators on the pack's device, in run order.
        Everything else as for :class:`~mtrl_fair.agents.sac_update.SACUpdate`, with the networks,
        temperatures and optimizers of the whole pack.
    """

    def __init__(
        self,
        *,
        config: MTSACConfig,
        actor: nn.Module,
        critic: nn.Module,
        critic_target: nn.Module,
        log_alpha: Tensor,
        actor_optimizer: torch.optim.Optimizer,
        critic_optimizer: torch.optim.Optimizer,
        temperature_optimizer: torch.optim.Optimizer,
        member_combiners: dict[str, list[Combiner]],
        generators: Sequence[torch.Generator],
        num_tasks: int,
        net_obs_dim: int,
        action_dim: int,
        target_entropy: float,
    ) -> None:
        super().__init__(
            config=config,
            actor=actor,
            critic=critic,
            critic_target=critic_target,
            log_alpha=log_alpha,
            actor_optimizer=actor_optimizer,
            critic_optimizer=critic_optimizer,
            temperature_optimizer=temperature_optimizer,
            combiners={group: members[0] for group, members in member_combiners.items()},
            num_tasks=num_tasks,
            net_obs_dim=net_obs_dim,
            action_dim=action_dim,
            target_entropy=target_entropy,
        )
        self.member_combiners = member_combiners
        self.generators = list(generators)
        self.runs = len(self.generators)
        self.skips = SkipCounter((self.runs, num_tasks), log_alpha.device)

    def is_combined(self, group: str) -> bool:
        return group in self.config.combine and not all(isinstance(c, Mean) for c in self.member_combiners[group])

    def _combiners_of(self, group: str) -> list[Combiner]:
        return self.member_combiners[group] if self.is_combined(group) else [self._mean] * self.runs

    def draw_noise(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        # Each run draws (2, *shape) from its generator, as its solo update draws from the default one.
        return torch.stack(
            [torch.randn((2, *shape), device=device, generator=generator) for generator in self.generators], dim=1
        )

    def backward(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], Any],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        *,
        module: nn.Module,
        diagnostics: bool,
        has_aux: bool,
        batched_loss: Callable[[], Any],
    ) -> tuple[CombinedGradient, Any]:
        def with_aux() -> tuple[Tensor, Any]:
            value = batched_loss()
            return value if has_aux else (value, None)

        combiners = self._combiners_of(group)
        tensors = list(params.values())
        if not diagnostics and all(isinstance(c, Mean) for c in combiners):
            # The mean of each run's task losses; one backward pass for the pack (runs are independent).
            return backward_per_task_func(
                loss_fn, params, task_batch, combiners[0], has_aux=True, batched_loss=with_aux
            )
        plan = layer_plan(module, params)
        if plan is None:
            raise ValueError(f"the packed {group} has parameters outside its packed layers")
        losses, grads, aux = layer_task_gradients(with_aux, module, plan)
        num_tasks = losses.shape[-1]
        # Each run's slice of each parameter's .grad: its members are contiguous (actor: run r;
        # critic: its twins 2r and 2r + 1).
        outputs = [grad_buffer(param).view(self.runs, -1) for param in tensors]
        results = [
            combine_rows(
                combiner,
                [grads[name][run].reshape(num_tasks, -1) for name in params],
                [output[run] for output in outputs],
                losses=losses[run],
                diagnostics=diagnostics,
            )
            for run, combiner in enumerate(combiners)
        ]
        combined = CombinedGradient(
            losses,
            torch.stack([result.weights for result in results]),
            torch.stack([r.grad_norms for r in results]) if diagnostics else None,  # type: ignore[misc]
            torch.stack([r.cosine for r in results]) if diagnostics else None,  # type: ignore[misc]
        )
        return combined, aux

    def combine_temperature(self, task_grads: Tensor, losses: Tensor) -> None:
        output = grad_buffer(self.log_alpha).view(self.runs, -1)
        for run, combiner in enumerate(self.member_combiners["temperature"]):
            combine_rows(combiner, [task_grads[run].unsqueeze(1)], [output[run]], losses=losses[run])
