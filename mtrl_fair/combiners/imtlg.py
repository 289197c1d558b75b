"""IMTL-G: the impartial direction, with equal projections on every task's unit gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl_fair.combiners.base import GramianCombiner
from mtrl_fair.combiners.mgda import normalized_gram, solver_eps

# Gradients shorter than this fraction of the longest one are treated as zero: their direction is
# rounding noise, and the 1/‖gᵢ‖ in their weight would overflow float32.
_ZERO_ROW = 1e-12
# |Σ vᵢ| below this fraction of Σ |vᵢ| means no sum-to-one weighting has equal projections.
_DEGENERATE_SUM = 1e-6


class IMTLG(GramianCombiner):
    """Impartial gradient weighting: the update projects equally on every task's unit gradient.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR
    2021 (IMTL-G, the gradient part of IMTL). The generalisation to linearly dependent gradients
    follows TorchJD (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv 2406.16232).

    IMTL-G picks weights ``w`` summing to 1 such that ``d = Σᵢ wᵢ gᵢ`` has the same inner product
    with every unit gradient ``uᵢ = gᵢ / ‖gᵢ‖``. In Gram terms, ``G v = n`` with ``n`` the gradient
    norms and ``w = v / Σ v``. This implementation solves the equivalent, well-scaled system
    ``C x = 1`` on the cosine matrix ``C = N⁻¹ G N⁻¹`` (``N = diag(n)``), so ``v = N⁻¹ x``, with a
    ridge of a few ulps of the Gram matrix's precision and ``torch.linalg.solve_ex`` (no host
    synchronisation; a pseudo-inverse would need an SVD, which synchronises on CUDA).

    Scale convention: the weights sum to 1, as in the paper (``α₁ = 1 − Σ_{i≥2} αᵢ``). They depend on
    the relative gradient norms only, so the Gram matrix is normalised by its mean diagonal first.

    Degenerate inputs:
        - Zero gradients (shorter than 1e-12 times the longest) get weight 0 and no constraint.
        - Duplicated gradients share their weight. When no direction in the gradients' span has
          equal non-zero projections (opposite gradients, for instance), the ridge drives the
          direction to zero, its exact limit; TorchJD's pseudo-inverse returns a least-squares
          compromise there instead.
        - When ``|Σ v|`` is below 1e-6 ``Σ |v|``, the weights would explode: all weights are 0
          (TorchJD does the same below an absolute 1e-12).

    Departs from the official formulation (the authors released no code; common reimplementations
    such as LibMTL's and Nash-MTL's invert ``D Uᵀ`` directly):
        - Solved on the cosine matrix with a ridge, so linearly dependent or zero gradients give
          finite weights instead of a singular-matrix error or NaNs.
        - When ``Σ v < 0`` the sum-to-one normalisation would turn the impartial direction into
          one that increases every loss; this implementation divides by ``|Σ v|`` instead, so the
          direction always has equal *positive* projections and the weights then sum to −1.
    """

    name = "imtlg"

    def weights(self, gram: Tensor) -> Tensor:
        q = normalized_gram(gram)
        num_tasks = q.shape[0]
        norms = q.diagonal().clamp_min(0.0).sqrt()
        active = norms > _ZERO_ROW * norms.max()
        mask = active.to(q.dtype)
        safe_norms = torch.where(active, norms, 1.0)

        cosines = q / torch.outer(safe_norms, safe_norms)
        ridge = solver_eps(gram.dtype, num_tasks)
        matrix = cosines * torch.outer(mask, mask) + torch.diag(torch.where(active, ridge, 1.0))
        x = torch.linalg.solve_ex(matrix, mask)[0]
        v = x * mask / safe_norms

        total = v.sum()
        ok = torch.isfinite(total) & (total.abs() > _DEGENERATE_SUM * v.abs().sum())
        weights = torch.where(ok, v / torch.where(ok, total.abs(), 1.0), 0.0)
        return weights.to(gram.dtype)
