"""PCGrad: project each task gradient off the gradients it conflicts with, in random order."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from mtrl_fair.combiners.base import GramianCombiner, check_number
from mtrl_fair.combiners.mgda import normalized_gram

# Gradients shorter than this fraction of the longest one are not projected against: their
# direction is rounding noise, and the projection coefficient would overflow float32.
_ZERO_ROW = 1e-12


class PCGrad(GramianCombiner):
    """Projecting conflicting gradients ("gradient surgery").

    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS
    2020 (arXiv 2001.06782), Algorithm 1.

    For each task ``i``, start from ``gᵢ`` and visit the other tasks ``j`` in a random order; when
    the current vector conflicts with ``gⱼ`` (negative inner product) remove its component along
    ``gⱼ``. Every projected vector is a linear combination of the original gradients, so the
    method runs on the Gram matrix alone: a ``K×K`` coefficient matrix is updated instead of
    ``P``-dimensional vectors, and the effective weights are its column means.

    Randomness: each call draws ``K`` independent orders (one per task, as TorchJD and the common
    PyTorch reimplementation do) as ``argsort`` of uniform keys from a ``torch.Generator`` held by
    the combiner, on the Gram matrix's device, so nothing is read back to the host. The generator
    is seeded with ``seed``; :meth:`reset` re-seeds it, and its state is saved by
    :meth:`state_dict`. The first call on a new device starts a fresh generator there from ``seed``
    (CPU and CUDA streams differ). To capture :meth:`weights` in a CUDA graph, register the
    generator first: ``graph.register_generator_state(combiner.generator(device))``.

    Scale convention: the direction is the *mean* of the projected gradients, consistent with
    :class:`~mtrl_fair.combiners.mean.Mean` (without conflicts PCGrad returns exactly the mean). The
    paper and the official code *sum* them: multiply by ``K`` (or the learning rate) to match.

    Departs from the official code (TensorFlow, ``PCGrad_tf.py``):
        - Mean instead of sum (above).
        - The official code calls ``tf.random.shuffle`` but discards its result, so it projects in
          the fixed order ``0..K-1``; this one uses a fresh random order per task and per call,
          as Algorithm 1 of the paper describes.
        - The official code also "projects" each gradient against itself (a no-op unless it is
          zero) and divides by ``‖gⱼ‖²`` unguarded, giving NaN for a zero gradient; here ``j = i``
          is skipped, and gradients shorter than 1e-12 times the longest are never projected against.

    Args:
        seed: seed of the generator that draws the task orders.
    """

    name = "pcgrad"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(check_number("seed", seed, at_least=0, integer=True))
        self._generator = torch.Generator().manual_seed(self.seed)

    def hparams(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator that draws the orders on ``device`` (a fresh one, seeded, on a new device)."""
        device = torch.device(device)
        if not _same_device(self._generator.device, device):
            self._generator = _seeded_generator(device, self.seed)
        return self._generator

    def draw_orders(self, num_tasks: int, device: torch.device | str) -> Tensor:
        """``(K, K)`` random permutations: row ``i`` is the order in which task ``i`` visits the others."""
        keys = torch.rand(num_tasks, num_tasks, generator=self.generator(device), device=device)
        return torch.argsort(keys, dim=1)

    def weights(self, gram: Tensor) -> Tensor:
        orders = self.draw_orders(gram.shape[0], gram.device)
        return pcgrad_weights(gram, orders).to(gram.dtype)

    def reset(self) -> None:
        self._generator.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator_device": str(self._generator.device),
            "generator_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"generator_device", "generator_state"}
        if set(state) != expected:
            raise ValueError(f"PCGrad state must have keys {sorted(expected)}, got {sorted(state)}")
        device = torch.device(state["generator_device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            # A GPU checkpoint loaded on a CPU-only machine: the CUDA stream cannot be continued.
            warnings.warn(
                "PCGrad: the saved generator is on CUDA, which is unavailable; re-seeding on the CPU",
                stacklevel=2,
            )
            self._generator = torch.Generator().manual_seed(self.seed)
            return
        generator = _seeded_generator(device, self.seed)
        generator.set_state(state["generator_state"])
        self._generator = generator


def pcgrad_weights(gram: Tensor, orders: Tensor) -> Tensor:
    """PCGrad's effective weights (mean convention) for given visiting ``orders``, in float64.

    ``orders[i]`` is a permutation of ``0..K-1``: task ``i`` is projected against the tasks in that
    order (itself skipped). Coefficients are float64 whatever the Gram matrix's dtype.
    """
    q = normalized_gram(gram)
    num_tasks = q.shape[0]
    diag = q.diagonal()
    usable = diag > (_ZERO_ROW**2) * diag.max()
    inv_sq_norms = torch.where(usable, 1.0 / torch.where(usable, diag, 1.0), 0.0)

    index = torch.arange(num_tasks, device=q.device)
    # For every step t, the row of G, the 1/‖gⱼ‖² factor (0 for j = i) and the one-hot of the task
    # j = orders[i, t] that task i meets at that step, all gathered up front: the loop is then
    # a handful of element-wise operations per step.
    rows = q[orders]  # (K, K_steps, K)
    factors = torch.where(orders == index.unsqueeze(1), 0.0, inv_sq_norms[orders])  # (K, K_steps)
    one_hots = (orders.unsqueeze(2) == index).to(q.dtype)  # (K, K_steps, K)

    # Row i holds the coefficients of task i's projected gradient in terms of the original ones.
    coeffs = torch.eye(num_tasks, dtype=q.dtype, device=q.device)
    for step in range(num_tasks):
        inner = (coeffs * rows[:, step]).sum(dim=1)
        shrink = inner.clamp(max=0.0) * factors[:, step]
        coeffs = coeffs - shrink.unsqueeze(1) * one_hots[:, step]
    return coeffs.mean(dim=0)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
