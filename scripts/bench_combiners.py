"""Time the gradient combiners on MT10/MT50-sized SAC critic updates.

The workload is the shape of a real multi-task SAC critic update: a 3×400 ReLU MLP ``Q(s, a)`` whose
input is the 39-dimensional Meta-World observation, the K-dimensional task one-hot and the
4-dimensional action; 128 transitions per task; one MSE loss per task (to random targets).

Two things are timed, each as the median over ``--repeats`` runs after a warm-up, the methods
interleaved (each repeat runs every method once), so that their ratios are measured side by side:

* ``solve``: the task weights from a realistic ``K×K`` Gram matrix (that of the per-task critic
  gradients at initialisation), for every registry combiner that has ``weights()``, for TorchJD's
  ``FairGradWeighting(alpha=2)`` (``torchjd_fairgrad``) and for the published RL code's solve
  (``paper_rl``: Gram copied to the CPU, 20 SGD steps, via ``make("fairgrad", solver="sgd")``).
* ``backward``: one full update producing ``.grad`` for the critic, forward pass included:
  ``mean`` is plain ``losses.mean().backward()`` (the baseline every ratio refers to); every
  registry combiner goes through :func:`mtrl_fair.jacobian.backward_per_task_func` as the agents
  call it (``module=``: per-task gradients of the linear layers from one backward pass, see
  :mod:`mtrl_fair.layer_jacobian`; ``mean`` itself takes its one-backward shortcut, as
  ``mean/combined``), with ``--vmap`` also through its ``torch.func.vmap`` path (method
  ``<name>/vmap``), and with ``--generic`` through :func:`mtrl_fair.jacobian.backward_per_task`
  (method ``<name>/generic``);
  ``paper_rl`` reimplements the published RL code (K separate backward passes, Gram to the CPU,
  20 SGD steps with a host read per step, ``.grad`` written from the weighted rows).

Usage::

    python scripts/bench_combiners.py [--device cpu|cuda] [--json PATH] [--tasks 10 50]
        [--repeats N] [--methods mean fairgrad paper_rl ...] [--what solve backward] [--quick]

Methods that cannot run (a missing optional dependency, an error) are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.func import functional_call

from mtrl_fair.combiners import Combiner, GramianCombiner, available, make
from mtrl_fair.jacobian import backward_per_task, backward_per_task_func, per_task_gradients

OBS_DIM = 39
ACTION_DIM = 4
HIDDEN = 400
NUM_HIDDEN_LAYERS = 3
SAMPLES_PER_TASK = 128
FAIRGRAD_ALPHA = 2.0
PAPER_SGD_STEPS = 20

BASELINE = "mean"
TORCHJD_FAIRGRAD = "torchjd_fairgrad"
PAPER_RL = "paper_rl"


@dataclass
class Result:
    num_tasks: int
    method: str
    what: str
    ms_median: float | None = None
    repeats: int = 0
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Workload.
# --------------------------------------------------------------------------------------------------


def make_critic(num_tasks: int, device: torch.device) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = OBS_DIM + num_tasks + ACTION_DIM
    for _ in range(NUM_HIDDEN_LAYERS):
        layers += [nn.Linear(width, HIDDEN), nn.ReLU()]
        width = HIDDEN
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(device)


def make_batch(num_tasks: int, device: torch.device, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(x, y)``: critic inputs ``(K, 128, 39 + K + 4)`` and targets ``(K, 128, 1)``."""
    shape = (num_tasks, SAMPLES_PER_TASK)
    obs = torch.randn(*shape, OBS_DIM, generator=generator)
    one_hot = torch.eye(num_tasks)[:, None, :].expand(*shape, num_tasks)
    action = torch.rand(*shape, ACTION_DIM, generator=generator) * 2 - 1
    target = torch.randn(*shape, 1, generator=generator)
    return torch.cat([obs, one_hot, action], dim=-1).to(device), target.to(device)


def task_losses(critic: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The ``(K,)`` per-task MSE losses from one ordinary batched forward."""
    return ((critic(x) - y) ** 2).mean(dim=(1, 2))


def make_loss_fn(critic: nn.Module) -> Callable[[dict[str, Tensor], tuple[Tensor, Tensor]], Tensor]:
    def loss_fn(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return ((functional_call(critic, params, (x,)) - y) ** 2).mean()

    return loss_fn


# --------------------------------------------------------------------------------------------------
# The published RL code (OptMN-Lab/fairgrad, mtrl_files/fairgrad.py), reimplemented as the anchor.
# --------------------------------------------------------------------------------------------------


def paper_sgd_weights(gram_cpu: Tensor, alpha: float = FAIRGRAD_ALPHA) -> Tensor:
    """20 SGD steps (lr 0.1, momentum 0.5, clipped) on ||G w - w^(-1/alpha)||², best iterate."""
    num_tasks = gram_cpu.shape[0]
    w = torch.ones(num_tasks) / num_tasks
    w.requires_grad = True
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.5)
    w_best, obj_best = w.detach().clone(), np.inf
    for _ in range(PAPER_SGD_STEPS):
        optimizer.zero_grad()
        obj = torch.linalg.norm(torch.mv(gram_cpu, w) - torch.pow(1 / (w + 1e-8), 1 / alpha)) ** 2
        if obj.item() < obj_best:
            obj_best = obj.item()
            w_best = w.detach().clone()
        obj.backward()
        torch.nn.utils.clip_grad_norm_(w, max_norm=1.0)
        optimizer.step()
        w.data.clamp_(min=1e-8)
    return w_best


def paper_rl_write_grads(losses: Tensor, params: list[Tensor]) -> Tensor:
    """K separate backward passes → rows → Gram on the CPU → SGD solve → ``.grad``; the weights."""
    num_tasks = losses.shape[0]
    rows = []
    for k in range(num_tasks):
        grads = torch.autograd.grad(losses[k], params, retain_graph=k != num_tasks - 1)
        rows.append(torch.nn.utils.parameters_to_vector([g.contiguous() for g in grads]))
    grad_vec = torch.stack(rows)
    gram_cpu = torch.mm(grad_vec, grad_vec.t()).cpu()
    weights = paper_sgd_weights(gram_cpu).to(grad_vec.device)
    direction = (grad_vec * weights.view(-1, 1)).sum(0)
    offset = 0
    for param in params:
        param.grad = direction[offset : offset + param.numel()].view_as(param).data
        offset += param.numel()
    return weights


def paper_rl_backward(critic: nn.Module, x: Tensor, y: Tensor) -> None:
    """The published RL code's combined backward of the critic's per-task losses."""
    paper_rl_write_grads(task_losses(critic, x, y), list(critic.parameters()))


# --------------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------------


def measure_all(
    entries: list[tuple[Result, Callable[[], object]]], device: torch.device, args: argparse.Namespace
) -> None:
    """Time every entry, interleaved: repeat r runs each method once before repeat r + 1 starts.

    Interleaving makes the ratios side by side: a slow drift of the machine (another process, the
    clock) affects every method alike instead of whichever happened to run during it. Each entry's
    result gets the median milliseconds and the number of timed runs; a method stops repeating once
    it has used ``--budget`` seconds, and a method whose warm-up alone exceeds the budget (the K-pass
    reference at K=50 on a CPU) is measured by that one run. A method that raises is reported as
    skipped, with the reason.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], object]) -> float:
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - tic) * 1e3

    samples: dict[int, list[float]] = {}
    running: list[int] = []
    for index, (result, fn) in enumerate(entries):
        try:
            warmups = [timed(fn) for _ in range(args.warmup)]
        except Exception as error:  # a failing method is reported, not fatal
            result.skipped = reason_of(error)
            continue
        samples[index] = []
        if warmups and warmups[-1] > args.budget * 1e3:
            samples[index].append(warmups[-1])  # too slow to repeat: its one run is the measurement
        else:
            running.append(index)
    for _ in range(args.repeats):
        for index in list(running):
            samples[index].append(timed(entries[index][1]))
            if sum(samples[index]) > args.budget * 1e3:
                running.remove(index)
    for index, times in samples.items():
        entries[index][0].ms_median = statistics.median(times)
        entries[index][0].repeats = len(times)


def reason_of(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}"[:100] if text else type(error).__name__


def build_combiners(names: list[str]) -> tuple[dict[str, Combiner], dict[str, str]]:
    built: dict[str, Combiner] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            built[name] = make(name)
        except Exception as error:
            failed[name] = reason_of(error)
    return built, failed


def wanted(method: str, args: argparse.Namespace) -> bool:
    return args.methods is None or method in args.methods or method.split("/")[0] in args.methods


def bench_tasks(num_tasks: int, device: torch.device, args: argparse.Namespace) -> list[Result]:
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    critic = make_critic(num_tasks, device)
    x, y = make_batch(num_tasks, device, generator)
    params = dict(critic.named_parameters())
    loss_fn = make_loss_fn(critic)
    names = [name for name in available() if wanted(name, args)]
    combiners, failed = build_combiners(names)
    results: list[Result] = []
    entries: list[tuple[Result, Callable[[], object]]] = []

    def add(result: Result, fn: Callable[[], object]) -> None:
        results.append(result)
        entries.append((result, fn))

    if "solve" in args.what:
        _, grads = per_task_gradients(loss_fn, params, (x, y))
        jacobian = torch.cat([g.reshape(num_tasks, -1) for g in grads.values()], dim=1)
        gram = jacobian @ jacobian.T
        del jacobian, grads
        for name in names:
            result = Result(num_tasks, name, "solve")
            combiner = combiners.get(name)
            if combiner is None:
                result.skipped = failed[name]
            elif not isinstance(combiner, GramianCombiner):
                result.skipped = "no weights(): not a Gram-matrix combiner"
            else:
                add(result, functools.partial(combiner.weights, gram))
                continue
            results.append(result)
        if wanted(TORCHJD_FAIRGRAD, args):
            result = Result(num_tasks, TORCHJD_FAIRGRAD, "solve")
            try:
                from torchjd.aggregation import FairGradWeighting

                weighting = FairGradWeighting(alpha=FAIRGRAD_ALPHA)
                add(result, lambda: weighting(gram))
            except Exception as error:
                result.skipped = reason_of(error)
                results.append(result)
        if wanted(PAPER_RL, args):
            result = Result(num_tasks, PAPER_RL, "solve")
            try:
                sgd = make("fairgrad", alpha=FAIRGRAD_ALPHA, solver="sgd")
                assert isinstance(sgd, GramianCombiner)
                add(result, lambda: sgd.weights(gram.cpu()))
            except Exception as error:
                result.skipped = reason_of(error)
                results.append(result)

    if "backward" in args.what:

        def mean_backward() -> None:
            critic.zero_grad(set_to_none=True)
            task_losses(critic, x, y).mean().backward()

        # The baseline is always measured: every ratio refers to it.
        add(Result(num_tasks, BASELINE, "backward"), mean_backward)
        for name in names:
            combiner = combiners.get(name)
            # The combiner "mean" through the combined front door is reported next to the baseline.
            paths = [("layers", f"{name}/combined" if name == BASELINE else name)]
            if args.vmap:
                paths.append(("vmap", f"{name}/vmap"))
            if args.generic:
                paths.append(("generic", f"{name}/generic"))
            for path, method in paths:
                result = Result(num_tasks, method, "backward", extra={"path": path})
                if combiner is None:
                    result.skipped = failed[name]
                    results.append(result)
                    continue

                def update(c: Combiner = combiner, path: str = path) -> None:
                    critic.zero_grad(set_to_none=True)
                    if path == "layers":  # what the agents do: per-task gradients from one backward pass
                        backward_per_task_func(
                            loss_fn, params, (x, y), c, batched_loss=lambda: task_losses(critic, x, y), module=critic
                        )
                    elif path == "vmap":  # torch.func.vmap over a per-task loss function
                        backward_per_task_func(loss_fn, params, (x, y), c)
                    else:  # one batched backward from the (K,) losses
                        backward_per_task(task_losses(critic, x, y), list(critic.parameters()), c)

                add(result, update)
        if wanted(PAPER_RL, args):
            add(Result(num_tasks, PAPER_RL, "backward"), lambda: paper_rl_backward(critic, x, y))
    measure_all(entries, device, args)
    return results


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def baseline_ms(results: list[Result], num_tasks: int) -> float | None:
    for r in results:
        if r.num_tasks == num_tasks and r.method == BASELINE and r.what == "backward":
            return r.ms_median
    return None


def report(
    results: list[Result], device: torch.device, args: argparse.Namespace, console: Console
) -> list[dict]:
    table = Table(
        title=f"Combiners on a 3×{HIDDEN} SAC critic, {SAMPLES_PER_TASK} samples/task ({device.type})"
    )
    table.add_column("K", justify="right")
    table.add_column("what")
    table.add_column("method", no_wrap=True)
    table.add_column("ms (median)", justify="right")
    table.add_column("× mean backward", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("note", no_wrap=True)
    skipped: dict[str, set[str]] = {}
    records = []
    common = {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for r in results:
        base = baseline_ms(results, r.num_tasks)
        if r.ms_median is None:
            table.add_row(str(r.num_tasks), r.what, r.method, "-", "-", "0", "skipped")
            skipped.setdefault(str(r.skipped), set()).add(r.method)
            continue
        ratio = r.ms_median / base if base else None
        table.add_row(
            str(r.num_tasks),
            r.what,
            r.method,
            f"{r.ms_median:.3f}",
            "-" if ratio is None else f"{ratio:.2f}",
            str(r.repeats),
            "baseline" if r.method == BASELINE and r.what == "backward" else "",
        )
        records.append(
            {
                **common,
                "K": r.num_tasks,
                "method": r.method,
                "what": r.what,
                "ms_median": r.ms_median,
                "ratio_to_mean": ratio,
                "repeats": r.repeats,
                **r.extra,
            }
        )
    console.print(table)
    for reason, methods in skipped.items():
        console.print(f"skipped {', '.join(sorted(methods))}: {reason}", markup=False)
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--json", type=Path, help="write the records to this JSON file")
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50], help="numbers of tasks K")
    parser.add_argument("--repeats", type=int, help="timed runs per method (default: 3 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument(
        "--budget",
        type=float,
        help="stop repeating a method after this many seconds (default: 2 CPU, 10 CUDA)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        help=f"only these methods (registry names, {TORCHJD_FAIRGRAD}, {PAPER_RL}); the mean baseline always runs",
    )
    parser.add_argument("--what", nargs="+", choices=["solve", "backward"], default=["solve", "backward"])
    parser.add_argument("--vmap", action="store_true", help="also time the vmap path (method <name>/vmap)")
    parser.add_argument("--generic", action="store_true", help="also time the generic (autograd) path")
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.quick:
        defaults = {"repeats": 2, "warmup": 1, "budget": 1.0}
    else:
        defaults = {"repeats": 30 if cuda else 3, "warmup": 3 if cuda else 1, "budget": 10.0 if cuda else 2.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(
        f"torch {torch.__version__} | device {device.type}: {device_name(device)} | "
        f"threads {torch.get_num_threads()} | repeats {args.repeats} (warm-up {args.warmup}, "
        f"budget {args.budget:g} s/method) | python {platform.python_version()}"
    )
    results: list[Result] = []
    for num_tasks in args.tasks:
        results += bench_tasks(num_tasks, device, args)
    records = report(results, device, args, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        console.print(f"wrote {len(records)} records to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
