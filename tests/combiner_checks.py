"""Property checks shared by the tests of every combiner.

Each test module under ``tests/combiners/`` calls these on its own combiner; hypothesis feeds them
random and degenerate Jacobians.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from hypothesis import strategies as st
from torch import Tensor

from mtrl_fair.combiners import Combiner, GramianCombiner

DEGENERATE_KINDS = ("random", "zero_row", "duplicate_rows", "collinear", "opposite", "all_zero")


@st.composite
def jacobians(
    draw: st.DrawFn,
    min_tasks: int = 1,
    max_tasks: int = 8,
    max_params: int = 24,
    kinds: tuple[str, ...] = DEGENERATE_KINDS,
    min_log_scale: int = -12,
    max_log_scale: int = 12,
) -> Tensor:
    """A float32 ``(K, P)`` Jacobian, random or degenerate, scaled by 10^[-12, 12]."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    num_params = draw(st.integers(1, max_params))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(kinds))
    scale = 10.0 ** draw(st.integers(min_log_scale, max_log_scale))
    jacobian = random_jacobian(num_tasks, num_params, seed=seed, kind=kind)
    return (jacobian.double() * scale).float()


def random_jacobian(num_tasks: int, num_params: int, *, seed: int = 0, kind: str = "random") -> Tensor:
    """A ``(K, P)`` float32 Jacobian of the given kind (see :data:`DEGENERATE_KINDS`)."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(num_tasks, num_params, generator=generator)
    if kind == "zero_row":
        jacobian[0] = 0.0
    elif kind == "duplicate_rows" and num_tasks > 1:
        jacobian[1] = jacobian[0]
    elif kind == "collinear" and num_tasks > 1:
        jacobian[1:] = jacobian[0] * torch.rand(num_tasks - 1, 1, generator=generator).add(0.1)
    elif kind == "opposite" and num_tasks > 1:
        jacobian[1] = -jacobian[0]
    elif kind == "all_zero":
        jacobian.zero_()
    return jacobian


def check_shape_and_finite(combiner: Combiner, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
    """The direction is a finite ``(P,)`` vector and the weights a finite ``(K,)`` vector."""
    combination = combiner.combine(jacobian, losses)
    assert combination.direction.shape == (jacobian.shape[1],)
    assert combination.weights.shape == (jacobian.shape[0],)
    assert combination.direction.dtype == jacobian.dtype
    assert torch.isfinite(combination.direction).all(), f"{combiner!r} gave a non-finite direction"
    assert torch.isfinite(combination.weights).all(), f"{combiner!r} gave non-finite weights"
    return combination.direction


def check_weights_reproduce_direction(combiner: Combiner, jacobian: Tensor, rtol: float = 1e-4) -> None:
    """``direction == weights @ jacobian`` (the weights are the effective task weights)."""
    combination = combiner.combine(jacobian.double())
    expected = combination.weights.double() @ jacobian.double()
    scale = jacobian.double().norm() * combination.weights.double().abs().sum() + 1e-300
    assert (combination.direction.double() - expected).norm() <= rtol * scale


def check_permutation_equivariance(combiner: Combiner, jacobian: Tensor, rtol: float = 1e-4) -> None:
    """Reordering the tasks permutes the weights and leaves the direction unchanged."""
    permutation = torch.randperm(jacobian.shape[0], generator=torch.Generator().manual_seed(0))
    base = combiner.combine(jacobian.double())
    permuted = combiner.combine(jacobian.double()[permutation])
    # Round-off in weights @ J grows with the size of the summed terms, |w|·|J|: when large weights
    # cancel to a tiny direction (e.g. Nash-MTL's ridge-bounded weights on opposite, collinear
    # gradients) only that part of the direction is reproducible from one task order to another.
    terms = jacobian.double().norm() * (1.0 + base.weights.double().abs().sum())
    scale = base.direction.norm() + 1e-12 * terms + 1e-300
    assert (permuted.direction - base.direction).norm() <= rtol * scale
    assert torch.allclose(
        permuted.weights, base.weights[permutation], rtol=rtol, atol=rtol * base.weights.abs().max()
    )


def check_gramian_weights_match_combine(combiner: GramianCombiner, jacobian: Tensor) -> None:
    """``weights(J Jᵀ)`` equals the weights that :meth:`combine` used."""
    jacobian = jacobian.double()
    from_gram = combiner.weights(jacobian @ jacobian.T)
    from_combine = combiner.combine(jacobian).weights
    assert from_gram.shape == (jacobian.shape[0],)
    assert torch.allclose(from_gram, from_combine, rtol=1e-6, atol=1e-12)


def conflicting_jacobian(num_params: int = 6) -> Tensor:
    """Two strongly conflicting tasks of very different magnitudes, for directional checks."""
    jacobian = torch.zeros(2, num_params, dtype=torch.float64)
    jacobian[0, 0], jacobian[0, 1] = 10.0, 1.0
    jacobian[1, 0], jacobian[1, 1] = -1.0, 1.0
    return jacobian


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Inside the block, any host synchronisation on CUDA raises (``set_sync_debug_mode("error")``)."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def check_weights_sync_free_on_cuda(
    combiner: GramianCombiner, kind: str, rtol: float, atol: float = 1e-6
) -> None:
    """After a warm-up, ``weights`` runs on CUDA without host synchronisation and agrees with the CPU."""
    jacobian = random_jacobian(6, 40, seed=0, kind=kind).cuda()
    gram = jacobian @ jacobian.T
    combiner.weights(gram)  # warm-up: CUDA context, cuSOLVER handles
    with no_host_sync():
        weights = combiner.weights(gram)
    torch.testing.assert_close(weights.cpu(), combiner.weights(gram.cpu()), rtol=rtol, atol=atol)


def check_weights_capture_in_cuda_graph(
    combiner: GramianCombiner,
    rtol: float,
    atol: float = 1e-6,
    *,
    static: Tensor | None = None,
    fresh: Tensor | None = None,
    generators: Sequence[torch.Generator] = (),
    replays: int = 1,
) -> None:
    """``weights`` captured in a CUDA graph and replayed on a new Gram matrix agrees with the CPU.

    ``static`` and ``fresh`` are the Jacobians of the captured and the replayed Gram matrices
    (random ones by default); ``generators`` are registered with the graph, for combiners that draw
    random numbers.
    """
    static = (random_jacobian(6, 40, seed=1) if static is None else static).cuda()
    fresh = (random_jacobian(6, 40, seed=2) if fresh is None else fresh).cuda()
    static_gram = static @ static.T
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        combiner.weights(static_gram)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        captured = combiner.weights(static_gram)
    static_gram.copy_(fresh @ fresh.T)
    for _ in range(replays):
        graph.replay()
        torch.testing.assert_close(captured.cpu(), combiner.weights(static_gram.cpu()), rtol=rtol, atol=atol)
