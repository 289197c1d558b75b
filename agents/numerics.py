"""Numbers never silently go bad: an update with a non-finite loss or gradient is skipped whole.

The check and the skip both stay on the device. :func:`guarded_step` gives fused Adam a
``found_inf`` flag (the mechanism of AMP's ``GradScaler``), so a bad step leaves the parameters,
moments and step count untouched without reading anything back to the host. :class:`SkipCounter`
keeps the book of skipped updates as in-place tensor operations, so that a captured CUDA graph
carries it from one replay to the next, and reads it back only when the training loop asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NonFiniteUpdateError", "SkipCounter", "guarded_step"]


class NonFiniteUpdateError(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients."""


def guarded_step(optimizer: torch.optim.Optimizer, losses: Tensor, earlier_ok: Tensor | None = None) -> Tensor:
    """``optimizer.step()`` unless a loss or a gradient is not finite; return the 0-d "finite" flag.

    ``earlier_ok`` chains the steps of one update: once a step was skipped, the later ones are
    skipped too, so an update is applied whole or not at all. The check and the skip both stay on
    the device: fused Adam reads ``found_inf`` and leaves the parameters, moments and step count
    untouched when it is set.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norms = torch.stack(torch._foreach_norm(grads)) if grads else losses.new_zeros(1)
    finite = torch.isfinite(losses).all() & torch.isfinite(grad_norms).all()
    if earlier_ok is not None:
        finite = finite & earlier_ok
    optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
    optimizer.step()
    return finite


class SkipCounter:
    """Skipped updates on the device: in all, the current and the longest run of consecutive skips,
    and the tasks and iteration of the last skip."""

    def __init__(self, tasks_shape: int | tuple[int, ...], device: torch.device) -> None:
        """``tasks_shape``: that of the per-task losses, ``K`` (or ``(R, K)`` for a pack of R runs)."""
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive = torch.zeros((), dtype=torch.int64, device=device)
        self.longest_run = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_tasks = torch.zeros(tasks_shape, dtype=torch.bool, device=device)
        self.bad_iteration = torch.zeros((), dtype=torch.int64, device=device)

    def count(self, ok: Tensor, critic_loss: Tensor, actor_loss: Tensor, iteration: Tensor) -> None:
        """Book one update whose 0-d flag is ``ok``, as in-place tensor ops (no host synchronisation)."""
        self.skipped += (~ok).long()
        self.consecutive.copy_(torch.where(ok, 0, self.consecutive + 1))
        torch.maximum(self.longest_run, self.consecutive, out=self.longest_run)
        bad = ~(torch.isfinite(critic_loss) & torch.isfinite(actor_loss))
        self.bad_tasks.copy_(torch.where(ok, self.bad_tasks, bad))
        self.bad_iteration.copy_(torch.where(ok, self.bad_iteration, iteration))

    @property
    def total(self) -> int:
        """Updates skipped in all (reads from the device)."""
        return int(self.skipped.item())

    def check(self, limit: int, task_names: Sequence[str]) -> None:
        """Raise :class:`NonFiniteUpdateError` once ``limit`` updates in a row were skipped (three reads)."""
        if int(self.longest_run.item()) < limit:
            return
        flags = self.bad_tasks.flatten().tolist()  # task_names name the flattened tasks (run/task in a pack)
        tasks = [name for name, bad in zip(task_names, flags, strict=True) if bad]
        where = f"task(s) {', '.join(tasks)}" if tasks else "gradients of finite losses"
        raise NonFiniteUpdateError(
            f"{limit} consecutive updates had non-finite losses or gradients ({where}, last at iteration "
            f"{int(self.bad_iteration.item())}); no weight was changed by them, and training stopped. "
            "Check the rewards and observations, lower the learning rates, or resume from the last checkpoint"
        )
