"""Nash-MTL: the Nash bargaining solution among the tasks.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022, arXiv 2202.01017.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtrl_fair.combiners.base import GramianCombiner, check_number, symmetrize
from mtrl_fair.combiners.fairgrad import fairgrad_weights


class NashMTL(GramianCombiner):
    """Nash-MTL (Navon et al., ICML 2022, arXiv 2202.01017).

    The tasks bargain over the update ``d`` in a ball around zero; the Nash bargaining solution
    maximises ``Σᵢ log(gᵢᵀd)``. The paper shows it is ``d = Σᵢ wᵢ gᵢ`` with weights ``w > 0``
    solving ``(J Jᵀ) w = 1/w`` (elementwise), i.e. ``gᵢᵀd = 1/wᵢ``: each task's rate is inversely
    proportional to its weight. This is FairGrad's system at ``alpha = 1`` (proportional fairness),
    solved here exactly by :func:`mtrl_fair.combiners.fairgrad.fairgrad_weights`: damped Newton
    steps on a strictly convex potential, in float64 on the Gram matrix's device, with no host
    synchronisation (CUDA-graph capturable).

    Scale convention: scaling every gradient by ``c`` divides the weights by ``c``, so the
    unclipped direction does not depend on a common scale, and its norm is exactly ``√K`` at the
    solution (``‖d‖² = wᵀ(J Jᵀ)w = Σᵢ wᵢ/wᵢ``). As in the official code and TorchJD, the direction
    is then clipped to norm ``max_norm`` (the radius of the paper's ball; ``max_norm = 1`` by
    default), by rescaling the weights with ``min(1, max_norm / ‖d‖)`` computed from the Gram
    matrix. In non-degenerate cases that is a constant rescale to norm ``min(√K, max_norm)``.
    With ``max_norm = 0`` (no clipping) this combiner equals ``fairgrad`` with ``alpha = 1``.

    Degenerate inputs: a task whose gradient vanishes, or two exactly opposite gradients, leave
    the system without a solution (a weight diverges). The solve regularises the Gram matrix
    with ``ridge · s · I`` (``s`` its mean diagonal), which bounds such weights at about
    ``(ridge · s)^(-1/2)``; a vanished gradient contributes nothing to the direction whatever its
    weight. Every output is finite.

    Departs from the official code:

    - The official code approximates the solution by a sequence of at most ``optim_niter = 20``
      convex (concave-convex procedure) problems solved with cvxpy/ECOS on the CPU, warm-started
      from the previous step's weights, and stops once ``‖Ĝ w - 1/w‖ < 1e-3`` for the Gram matrix
      ``Ĝ`` normalised by its Frobenius norm. Its constraints multiply that normalisation back,
      so it targets the same raw-scale system as here, but its stopping test is on the normalised
      one; the result is inexact and depends on the previous steps. Here the system is solved to
      round-off, from scratch at every call (stateless), with ``max_iter`` Newton iterations.
    - ``update_weights_every`` (reuse the weights for that many steps) is left out: in the
      official code its point is to skip the K per-task backward passes on the in-between steps
      (it then backpropagates the weighted loss), which a combiner that receives the Jacobian
      cannot do, and the exact solve costs only a few ``(K, K)`` operations. Keeping it would
      also make the weights depend on past Jacobians. (The Meta-World Nash-MTL config in the FAMO
      repository uses 1.)
    - Clipping: the official code clips the norm of the whole gradient of the shared parameters
      after ``backward``; TorchJD rescales the weights so that ``‖Jᵀw‖ <= max_norm``; this
      combiner does as TorchJD. (The Nash-MTL agent in the FAMO repository's Meta-World code
      divides the update by ``max_norm`` instead, a no-op at its ``max_norm = 1``, so those runs
      were effectively unclipped: use ``max_norm=0`` to reproduce them.)
    - The ``ridge`` regularisation is new: in those degenerate cases the official solver fails
      (ECOS raises and the previous weights are kept).

    Args:
        max_norm: Clip the direction's norm to this value; ``0`` disables clipping.
        max_iter: Iteration cap of the Newton solver.
        ridge: Relative regularisation of the Gram matrix (see above).
    """

    name = "nashmtl"

    def __init__(self, *, max_norm: float = 1.0, max_iter: int = 50, ridge: float = 1e-10) -> None:
        self.max_norm = check_number("max_norm", max_norm, at_least=0.0)
        self.max_iter = int(check_number("max_iter", max_iter, at_least=1, integer=True))
        self.ridge = check_number("ridge", ridge, at_least=0.0, at_most=1.0)
        if self.max_norm == float("inf"):
            raise ValueError("max_norm must be finite (use 0 to disable clipping)")

    def hparams(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "max_iter": self.max_iter, "ridge": self.ridge}

    def weights(self, gram: Tensor) -> Tensor:
        gram64 = symmetrize(gram.to(torch.float64))
        weights = fairgrad_weights(gram64, 1.0, max_iter=self.max_iter, ridge=self.ridge)
        if self.max_norm > 0.0:
            # ‖Jᵀw‖² = wᵀ(J Jᵀ)w: the clip needs only the Gram matrix. torch.where, not an if: no sync.
            norm = (weights @ gram64 @ weights).clamp(min=0.0).sqrt()
            safe_norm = norm.clamp(min=torch.finfo(torch.float64).tiny)
            weights = weights * torch.where(norm > self.max_norm, self.max_norm / safe_norm, 1.0)
        return weights.to(gram.dtype)
