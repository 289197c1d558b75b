"""The Gram matrix ``J Jᵀ`` of the per-task gradients, and what it says about them.

Every Gramian combiner (FairGrad, MGDA, IMTL-G, UPGrad, ...) needs only this ``(K, K)`` matrix, and
so do the diagnostics logged during training: the task-gradient norms are the square roots of its
diagonal, their pairwise cosines its normalised entries. None of this reads back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gradient_diagnostics", "gram_diagnostics", "gram_of", "mean_pairwise_cosine"]


def gradient_diagnostics(jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(K,)`` row norms and ``(K, K)`` pairwise cosines of a ``(K, P)`` Jacobian."""
    with torch.no_grad():
        return gram_diagnostics(jacobian @ jacobian.T)


def gram_diagnostics(gram: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(K,)`` gradient norms and ``(K, K)`` pairwise cosines from the Gram matrix ``J Jᵀ``.

    Computed without host synchronisation. Zero rows get norm 0 and cosine 0 with every row
    (themselves included), never NaN.
    """
    with torch.no_grad():
        sq_norms = gram.diagonal().clamp_min(0.0)
        norms = sq_norms.sqrt()
        inv = torch.where(sq_norms > 0, sq_norms.rsqrt(), torch.zeros_like(sq_norms))
        cosine = (gram * inv[:, None] * inv[None, :]).clamp(-1.0, 1.0)
    return norms, cosine


def gram_of(rows: Sequence[Tensor]) -> Tensor:
    """``J Jᵀ`` for ``J`` the column-wise concatenation of ``rows`` (each ``(K, Pᵢ)``).

    A ``(K, P) @ (P, K)`` product with K small and P large is a poor fit for BLAS, which runs it
    at a fraction of the memory bandwidth; split into a batch of shorter products it runs 2-3×
    faster on a CPU. Small blocks (biases) are concatenated first, to pay one call for all.
    """
    small = [block for block in rows if block.shape[1] < _GRAM_CHUNK_MIN]
    large = [block for block in rows if block.shape[1] >= _GRAM_CHUNK_MIN]
    gram = None
    if small:
        block = torch.cat(small, dim=1) if len(small) > 1 else small[0]
        gram = block @ block.T
    for block in large:
        chunks = next((c for c in _GRAM_CHUNKS if block.shape[1] % c == 0), 1)
        pieces = block.reshape(block.shape[0], chunks, -1).transpose(0, 1)
        term = torch.bmm(pieces, pieces.transpose(1, 2)).sum(dim=0)
        gram = term if gram is None else gram + term
    assert gram is not None  # rows is never empty (write_combined_grad checks it)
    return gram


_GRAM_CHUNK_MIN = 4096
_GRAM_CHUNKS = (8, 4, 2)


def mean_pairwise_cosine(cosine: Tensor | None) -> Tensor | None:
    """Mean of the off-diagonal entries of ``(..., K, K)`` cosine matrices (0 when K = 1); None stays None."""
    if cosine is None:
        return None
    num_tasks = cosine.shape[-1]
    if num_tasks < 2:
        return cosine.new_zeros(cosine.shape[:-2])
    off_diagonal = cosine.sum(dim=(-2, -1)) - cosine.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return off_diagonal / (num_tasks * (num_tasks - 1))
