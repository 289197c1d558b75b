"""The Triton kernel of FairGrad's Newton solve.

Without a GPU, Triton's interpreter runs the same kernel on the CPU (in a subprocess, since the
interpreter is chosen when the kernel is defined): this checks its maths in CI. On CUDA the kernel
is checked against the tensor-op solver, for host synchronisation and under graph capture.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from combiner_checks import no_host_sync, random_jacobian

from mtrl_fair.combiners import fairgrad_kernel
from mtrl_fair.combiners.fairgrad import fairgrad_residual, fairgrad_weights

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
needs_cuda_kernel = pytest.mark.skipif(not fairgrad_kernel.available(), reason="needs CUDA and triton")

INTERPRETED_CHECK = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    import triton
    from combiner_checks import random_jacobian
    from mtrl_fair.combiners import fairgrad, fairgrad_kernel

    def kernel(gram, alpha):
        out = torch.empty(gram.shape[0], dtype=gram.dtype)
        scalars = torch.tensor([1.0 / alpha, 1e-10, -alpha / (1.0 + alpha), fairgrad.TOLERANCE],
                               dtype=torch.float64)
        fairgrad_kernel.fairgrad_newton_kernel[(1,)](
            gram, out, scalars, gram.shape[0], gram.stride(0), gram.stride(1), 50,
            LOG_UTILITY=alpha == 1.0,
            BLOCK=max(16, triton.next_power_of_2(gram.shape[0])),
            LINE_SEARCH_STEPS=fairgrad.LINE_SEARCH_STEPS, ARMIJO=fairgrad.ARMIJO,
            ROUND_OFF=fairgrad.ROUND_OFF, TO_BOUNDARY=fairgrad.TO_BOUNDARY,
        )
        return out

    worst = {{"random": 0.0, "zero_row": 0.0}}
    cases = [(k, kind, alpha) for k in (1, 5) for kind in worst for alpha in (0.5, 1.0, 2.0)]
    for seed, (k, kind, alpha) in enumerate(cases):
        jacobian = random_jacobian(k, 12, seed=seed, kind=kind).double() * 10.0 ** (seed % 7 - 3)
        gram = jacobian @ jacobian.T
        ours = kernel(gram, alpha)
        reference = fairgrad.fairgrad_weights(gram, alpha)
        worst[kind] = max(worst[kind], ((ours - reference).norm() / reference.norm()).item())
    print(worst["random"], worst["zero_row"])
    """
)


@needs_triton
def test_interpreted_kernel_matches_the_tensor_solver() -> None:
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK.format(tests=tests)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    worst_random, worst_degenerate = map(float, result.stdout.split())
    assert worst_random < 1e-10
    # A vanished gradient leaves a ridge-dominated weight, where elimination order shows in round-off.
    assert worst_degenerate < 1e-5


def test_cpu_tensors_never_take_the_kernel() -> None:
    assert not fairgrad_kernel.available() or torch.cuda.is_available()
    with pytest.raises(ValueError, match="CUDA Gram matrix"):
        fairgrad_kernel.fairgrad_weights_kernel(
            torch.eye(2),
            2.0,
            max_iter=5,
            ridge=0.0,
            line_search_steps=2,
            armijo=1e-4,
            round_off=0.0,
            to_boundary=0.99,
            tolerance=1e-13,
        )


@pytest.mark.gpu
@needs_cuda_kernel
@pytest.mark.parametrize("num_tasks", [1, 2, 10, 50, 64, 65])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 20.0])
def test_cuda_kernel_matches_the_tensor_solver(num_tasks: int, alpha: float) -> None:
    for kind in ("random", "zero_row", "collinear"):
        jacobian = random_jacobian(num_tasks, 300, seed=num_tasks, kind=kind).double().cuda() + 0.1
        gram = jacobian @ jacobian.T
        kernel = fairgrad_weights(gram, alpha)  # K = 65 falls back to the tensor-op solver
        tensor_ops = fairgrad_weights(gram, alpha, backend="torch")
        reference = fairgrad_weights(gram.cpu(), alpha)
        assert torch.allclose(kernel.cpu(), reference, rtol=1e-7)
        assert torch.allclose(tensor_ops.cpu(), reference, rtol=1e-7)
        if kind == "random":
            assert fairgrad_residual(gram, kernel, alpha) < 1e-9


@pytest.mark.gpu
@needs_cuda_kernel
def test_cuda_kernel_is_sync_free_and_capturable() -> None:
    jacobian = random_jacobian(10, 2000, seed=3).cuda()
    gram = jacobian @ jacobian.T
    fairgrad_weights(gram, 2.0)  # compile
    with no_host_sync():
        weights = fairgrad_weights(gram, 2.0)
    static = gram.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fairgrad_weights(static, 2.0)
    static.mul_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(captured, fairgrad_weights(3.0 * gram, 2.0), rtol=1e-5)
    assert torch.allclose(weights.cpu(), fairgrad_weights(gram.cpu(), 2.0), rtol=1e-5)
