"""Time FairGrad's weight solve alone: our solvers against TorchJD's and the published RL code's.

    python scripts/bench_fairgrad_solve.py --device cuda --json bench-solve-cuda.json

For K in {10, 50}, on the Gram matrix of correlated task gradients of MT10/MT50 size, it times
(median wall-clock per call, including any copy to the CPU and back, which is what an update pays):
``newton`` (our default: the Triton kernel on CUDA, tensor ops on the CPU), ``newton_tensor_ops``
(tensor ops on CUDA, for comparison), ``torchjd`` (``torchjd.aggregation.FairGradWeighting``,
scipy on the CPU), ``least_squares`` (the paper's supervised solver) and ``paper_rl`` (the Gram
matrix copied to the CPU, then 20 SGD steps). It also reports each solver's relative residual.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torchjd.aggregation import FairGradWeighting

from mtrl_fair.combiners.fairgrad import (
    fairgrad_residual,
    fairgrad_weights,
    fairgrad_weights_least_squares,
    fairgrad_weights_sgd,
)


def realistic_gram(num_tasks: int, num_params: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Correlated task gradients with a spread of norms, as in multi-task SAC."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, num_params, generator=generator)
    jacobian = torch.randn(num_tasks, num_params, generator=generator) + 0.7 * shared
    jacobian *= torch.rand(num_tasks, 1, generator=generator) * 2 + 0.2
    jacobian = jacobian.to(device)
    return jacobian @ jacobian.T


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    alpha = args.alpha

    solvers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "newton": lambda gram: fairgrad_weights(gram, alpha),
        "newton_tensor_ops": lambda gram: fairgrad_weights(gram, alpha, backend="torch"),
        "torchjd": lambda gram: FairGradWeighting(alpha=alpha)(gram),
        "least_squares": lambda gram: fairgrad_weights_least_squares(gram, alpha),
        "paper_rl": lambda gram: fairgrad_weights_sgd(gram.cpu(), alpha).to(gram.device),
    }
    if device.type == "cpu":
        del solvers["newton_tensor_ops"]
    records = []
    table = Table(title=f"FairGrad solve, alpha={alpha}, {device} ({torch.get_num_threads()} threads)")
    for column in ("K", "solver", "ms (median)", "× newton", "relative residual"):
        table.add_column(column)
    for num_tasks, num_params in ((10, 340_000), (50, 360_000)):
        gram = realistic_gram(num_tasks, num_params, device)
        times = {
            name: time_call(functools.partial(solver, gram), device, args.repeats)
            for name, solver in solvers.items()
        }
        for name, solver in solvers.items():
            residual = fairgrad_residual(gram, solver(gram), alpha).item()
            ratio = times[name] / times["newton"]
            table.add_row(str(num_tasks), name, f"{times[name]:.3f}", f"{ratio:.1f}", f"{residual:.1e}")
            records.append(
                {
                    "device": device.type,
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "K": num_tasks,
                    "method": name,
                    "what": "solve",
                    "alpha": alpha,
                    "ms_median": times[name],
                    "ratio_to_newton": ratio,
                    "relative_residual": residual,
                }
            )
    Console().print(table)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
