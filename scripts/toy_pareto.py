"""The two-objective toy problem of CAGrad, solved by each gradient combiner: trajectories and Pareto front.

The problem is the one of Liu, Liu, Stone & Liu, "Conflict-Averse Gradient Descent for
Multi-task Learning", NeurIPS 2021 (arXiv 2110.14048), Appendix, also used by Navon et al.,
"Multi-Task Learning as a Bargaining Game" (Nash-MTL), ICML 2022 (arXiv 2202.01017) and by Ban &
Ji, "Fair Resource Allocation in Multi-Task Learning" (FairGrad), ICML 2024 (arXiv 2402.15638).
With parameters ``x = (x₁, x₂)``::

    f₁(x) = log(max(|0.5(−x₁ − 7) − tanh(−x₂)|, 5e-6)) + 6
    f₂(x) = log(max(|0.5(−x₁ + 3) + tanh(−x₂) + 2|, 5e-6)) + 6
    g₁(x) = ((−x₁ + 7)² + 0.1(−x₂ − 8)²) / 10 − 20
    g₂(x) = ((−x₁ − 7)² + 0.1(−x₂ − 8)²) / 10 − 20
    c₁(x) = max(tanh(0.5 x₂), 0),   c₂(x) = max(tanh(−0.5 x₂), 0)
    L₁(x) = c₁(x) f₁(x) + c₂(x) g₁(x),   L₂(x) = c₁(x) f₂(x) + c₂(x) g₂(x)

For ``x₂ > 0`` the losses are (scaled) log-distances to two sharp valleys, ``x₁ = −7 + 2 tanh(x₂)``
for task 1 and ``x₁ = 7 − 2 tanh(x₂)`` for task 2, which reach ``log 5e-6 + 6 ≈ −6.2`` at the
clamp; for ``x₂ < 0`` they are two offset quadratics whose trade-off curve, near ``x₂ ≈ −8`` from
``x₁ = −7`` to ``7``, is the Pareto set. The definitions are written from the CAGrad paper's
description of the toy example, not copied from any code. The constant we are least sure of is
the sign in front of ``tanh(−x₂)`` in ``f₂``: with ``+`` (used here) the tasks are exact mirror
images, ``L₁(x₁, x₂) = L₂(−x₁, x₂)``, as in the papers' symmetric figures.

Every trajectory runs ``torch.optim.Adam`` (PyTorch defaults, as in the papers) on ``x``, with
``.grad`` set to the direction that the combiner returns for the ``(2, 2)`` Jacobian
``[∇L₁; ∇L₂]``, computed by autograd. The combiners come from the registry
(:func:`mtrl_fair.combiners.make`) with their default hyperparameters unless given, and are
called as the training code calls them: ``combine`` with the Jacobian (and the losses, for a
loss-based method), then ``after_step`` with the losses at the updated point for stateful ones
(FAMO). FAMO reasons about ``log L`` and needs positive losses, while the toy losses go down to
−20, so loss-based combiners get ``L + LOSS_SHIFT`` (the Jacobian is unchanged); the figure and
the summary show the raw losses.

Budget: the papers run 20,000 (or more) Adam steps at ``lr = 1e-3``. Here every combiner call is
a separate small solve (CAGrad's and MGDA's exact active-set solvers take several milliseconds
per call on a CPU), so 9 methods × 5 starts × 20,000 steps would take the better part of an hour
on one core. The default is 500 steps at ``lr = 0.04``, the same ``steps × lr`` (Adam moves each
coordinate by at most about ``lr`` per step), which runs in about a minute and a half. It is not
the papers' experiment, and it differs in two visible ways:

* steps of 0.04 hop across the narrow valleys of the upper half that trap plain averaging at
  ``lr = 1e-3`` (there, ``mean`` from (−8.5, 7.5), (−8.5, 5) and (9, 9) is still inside a valley
  after 20,000 steps), so ``mean`` looks better here than in the papers;
* the floor of the lower basin is very flat in ``x₂``, and Adam's second-moment estimate still
  remembers the large early gradients, so some runs are still creeping down toward ``x₂ ≈ −8``
  when they stop (their losses are within a few tenths of the front).

``--steps 20000 --lr 1e-3`` reproduces the papers' setting, given the time.

The Pareto front is computed numerically: the non-dominated points of the losses on a fine grid
over the plotted square ``[−10, 10]²``. A run "ends on the front" when no grid point beats its
final losses by more than ``--front-tol`` in both tasks at once.

Usage::

    python scripts/toy_pareto.py [--out docs/images/toy_pareto.png] [--steps 500] [--lr 0.04]
        [--methods mean fairgrad:alpha=2 cagrad:c=0.4 ...] [--json PATH] [--front-tol 0.25]

A method is a registry name, optionally followed by ``:`` and comma-separated ``key=value``
hyperparameters (``fairgrad:alpha=2``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtrl_fair.combiners import Combiner, available, make
from mtrl_fair.combiners.base import uses_after_step

# Clamp of the log-distance in f₁ and f₂ (the valleys' depth).
LOWER = 5e-6
# The five starting points commonly shown with this problem.
STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, 5.0), (0.0, 0.0), (9.0, 9.0), (10.0, -8.0))
DEFAULT_METHODS: tuple[str, ...] = (
    "mean",
    "pcgrad",
    "cagrad",
    "mgda",
    "nashmtl",
    "fairgrad:alpha=1",
    "fairgrad:alpha=2",
    "fairgrad:alpha=10",
    "famo",
)
DEFAULT_STEPS = 500
DEFAULT_LR = 0.04
# The losses are above −20 everywhere; loss-based combiners (FAMO) get L + LOSS_SHIFT >= 1.
LOSS_SHIFT = 21.0
# The plotted square in x-space, and the grid that the contour and the Pareto front are computed on.
BOX = 10.0
GRID = 601
# A run ends "on the front" when no grid point beats its final losses by more than this in both
# tasks (about 1% of the losses' range of 20; the basin's floor is so flat in x₂ that runs still
# creeping along it sit 0.1 to 0.2 above the front).
FRONT_TOL = 0.25


# --------------------------------------------------------------------------------------------------
# The problem.
# --------------------------------------------------------------------------------------------------


def toy_losses(x: Tensor) -> Tensor:
    """The two task losses ``(L₁, L₂)`` at ``x`` of shape ``(..., 2)``, as a ``(..., 2)`` tensor."""
    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7.0) - torch.tanh(-x2)).abs(), min=LOWER).log() + 6.0
    f2 = torch.clamp((0.5 * (-x1 + 3.0) + torch.tanh(-x2) + 2.0).abs(), min=LOWER).log() + 6.0
    g1 = ((-x1 + 7.0).square() + 0.1 * (-x2 - 8.0).square()) / 10.0 - 20.0
    g2 = ((-x1 - 7.0).square() + 0.1 * (-x2 - 8.0).square()) / 10.0 - 20.0
    c1 = torch.clamp(torch.tanh(0.5 * x2), min=0.0)
    c2 = torch.clamp(torch.tanh(-0.5 * x2), min=0.0)
    return torch.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2], dim=-1)


def toy_jacobian(x: Tensor) -> tuple[Tensor, Tensor]:
    """The losses ``(..., 2)`` and their Jacobians ``(..., 2, 2)`` (row ``k`` is ``∇Lₖ``) at ``x``.

    One forward and one backward pass for any number of points: each point is copied once per task,
    and task ``k``'s loss is taken at copy ``k`` only, so that copy's gradient is ``∇Lₖ``.
    """
    copies = x.detach().unsqueeze(-2).expand(*x.shape[:-1], 2, 2).clone().requires_grad_(True)
    with torch.enable_grad():
        per_copy = toy_losses(copies)  # (..., copy, task)
        losses = per_copy.diagonal(dim1=-2, dim2=-1)  # (..., task): task k at copy k
        (jacobian,) = torch.autograd.grad(losses.sum(), copies)
    return losses.detach(), jacobian


# --------------------------------------------------------------------------------------------------
# Trajectories.
# --------------------------------------------------------------------------------------------------


def run_trajectories(
    combiners: Sequence[Combiner],
    starts: Sequence[Sequence[float]] | np.ndarray,
    steps: int,
    lr: float,
    *,
    loss_shift: float = LOSS_SHIFT,
) -> np.ndarray:
    """Run ``combiners[i]`` from ``starts[i]`` for every ``i`` at once; return the ``(N, steps + 1, 2)`` paths.

    Each run has its own combiner (stateful ones must not be shared). One ``torch.optim.Adam`` moves
    the ``(N, 2)`` tensor of points; Adam works elementwise, so every run still has its own state.
    The runs are batched only so that one autograd call gives all the Jacobians of a step.
    """
    points = torch.as_tensor(np.asarray(starts, dtype=np.float64)).reshape(-1, 2).clone()
    if len(combiners) != points.shape[0]:
        raise ValueError(f"got {len(combiners)} combiners for {points.shape[0]} starts")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = torch.nn.Parameter(points)
    optimizer = torch.optim.Adam([x], lr=lr)
    learners = [(i, c) for i, c in enumerate(combiners) if uses_after_step(c)]
    path = np.empty((steps + 1, points.shape[0], 2))
    path[0] = points.numpy()
    direction = torch.empty_like(points)
    with torch.no_grad():
        for step in range(steps + 1):
            losses, jacobian = toy_jacobian(x)
            shifted = losses + loss_shift
            # Inference mode only trims the dispatcher's per-call overhead (the combiners are pure
            # maths on tiny tensors, so that overhead is most of their cost here).
            with torch.inference_mode():
                if step > 0:
                    for i, combiner in learners:  # the losses at the point the last update reached
                        combiner.after_step(shifted[i])
                if step < steps:
                    for i, combiner in enumerate(combiners):
                        given = shifted[i] if combiner.requires_losses else None
                        direction[i] = combiner.combine(jacobian[i], given).direction
            if step > 0:
                path[step] = x.detach().numpy()
            if step == steps:
                break
            x.grad = direction
            optimizer.step()
    return path.transpose(1, 0, 2)


def run_trajectory(combiner: Combiner, start: Sequence[float], steps: int, lr: float) -> np.ndarray:
    """The ``(steps + 1, 2)`` path of Adam from ``start``, driven by ``combiner``'s directions."""
    return run_trajectories([combiner], [start], steps, lr)[0]


# --------------------------------------------------------------------------------------------------
# Pareto front.
# --------------------------------------------------------------------------------------------------


class Grid(NamedTuple):
    x1: np.ndarray
    """``(n, n)`` first coordinates."""
    x2: np.ndarray
    """``(n, n)`` second coordinates."""
    losses: np.ndarray
    """``(n, n, 2)`` task losses."""


class Front(NamedTuple):
    points: np.ndarray
    """``(F, 2)`` Pareto-optimal parameters among the grid points, ordered by increasing L₁."""
    losses: np.ndarray
    """``(F, 2)`` their losses."""


def loss_grid(box: float = BOX, size: int = GRID) -> Grid:
    """The losses on a ``size × size`` grid over ``[−box, box]²``."""
    axis = np.linspace(-box, box, size)
    x1, x2 = np.meshgrid(axis, axis)
    with torch.no_grad():
        losses = toy_losses(torch.as_tensor(np.stack([x1, x2], axis=-1))).numpy()
    return Grid(x1, x2, losses)


def pareto_front(grid: Grid) -> Front:
    """The non-dominated grid points (no other grid point is as good in both losses and better in one)."""
    points = np.stack([grid.x1, grid.x2], axis=-1).reshape(-1, 2)
    losses = grid.losses.reshape(-1, 2)
    order = np.lexsort((losses[:, 1], losses[:, 0]))  # by L₁, ties by L₂
    l2 = losses[order, 1]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], l2[:-1]]))
    keep = order[l2 < best_before]
    return Front(points[keep], losses[keep])


def front_gap(losses: np.ndarray, front: Front) -> np.ndarray:
    """By how much the best front point beats ``losses`` (``(..., 2)``) in both tasks at once.

    ``max over front points p of min(L₁ − p₁, L₂ − p₂)``: at most 0 on the (true) front, positive
    for a dominated point.
    """
    diff = losses[..., None, :] - front.losses  # (..., F, 2)
    return diff.min(axis=-1).max(axis=-1)


# --------------------------------------------------------------------------------------------------
# Methods, figure and summary.
# --------------------------------------------------------------------------------------------------


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"fairgrad:alpha=2,solver=newton"`` → ``("fairgrad", {"alpha": 2, "solver": "newton"})``.

    Registry names may hold a colon themselves (``"torchjd:UPGrad"``): the hyperparameters are what
    follows the last colon, when it follows one of the registry's own names or holds ``=``.
    """
    name, sep, rest = spec.rpartition(":")
    if not sep or ("=" not in rest and name not in available()):
        name, rest = spec, ""
    hparams: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"method {spec!r}: hyperparameters are key=value pairs, got {item!r}")
        try:
            hparams[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            hparams[key.strip()] = value.strip()
    make(name, **hparams)  # fail early, with the registry's message, on a bad name or value
    return name, hparams


def _plot(
    out: Path,
    results: list[dict[str, Any]],
    grid: Grid,
    front: Front,
    starts: np.ndarray,
    subtitle: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(results))
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(
        rows, 2 * columns, figsize=(6.6 * columns, 3.5 * rows), squeeze=False, layout="constrained"
    )
    colors = plt.get_cmap("tab10")(np.arange(len(starts)))
    mean_loss = grid.losses.mean(axis=-1)
    for index, result in enumerate(results):
        ax_x = axes[index // columns, 2 * (index % columns)]
        ax_l = axes[index // columns, 2 * (index % columns) + 1]
        ax_x.contourf(grid.x1, grid.x2, mean_loss, levels=24, cmap="Greys_r", alpha=0.55)
        ax_x.contour(grid.x1, grid.x2, mean_loss, levels=24, colors="k", linewidths=0.25, alpha=0.4)
        ax_x.scatter(*front.points.T, s=1.5, c="tab:olive", linewidths=0, zorder=2)
        ax_l.plot(*front.losses.T, color="tab:olive", lw=2.5, zorder=1)
        for path, losses, color in zip(result["paths"], result["loss_paths"], colors, strict=True):
            ax_x.plot(*path.T, color=color, lw=1.4, zorder=3)
            ax_x.plot(*path[0], "o", color=color, ms=5, mec="k", mew=0.6, zorder=4)
            ax_x.plot(*path[-1], "*", color=color, ms=11, mec="k", mew=0.6, zorder=5)
            ax_l.plot(*losses.T, color=color, lw=1.2, zorder=2)
            ax_l.plot(*losses[0], "o", color=color, ms=5, mec="k", mew=0.6, zorder=3)
            ax_l.plot(*losses[-1], "*", color=color, ms=11, mec="k", mew=0.6, zorder=4)
        ax_x.set(xlim=(-BOX, BOX), ylim=(-BOX, BOX), aspect="equal")
        ax_x.set_title(_wrap(result["repr"]), fontsize=8.5, loc="left")
        ax_x.tick_params(labelsize=7)
        ax_l.set_title(
            f"loss space: {result['on_front']}/{len(starts)} end on the front,\n"
            f"final (L₁ + L₂)/2 = {result['mean_loss']:.2f} (mean over starts)",
            fontsize=8.5,
            loc="left",
        )
        ax_l.set(xlim=(-22, 14), ylim=(-22, 14))
        ax_l.tick_params(labelsize=7)
        ax_l.grid(alpha=0.3, lw=0.5)
        if index // columns == rows - 1:
            ax_x.set_xlabel("x₁", fontsize=8)
            ax_l.set_xlabel("L₁", fontsize=8)
        if index % columns == 0:
            ax_x.set_ylabel("x₂", fontsize=8)
        ax_l.set_ylabel("L₂", fontsize=8, labelpad=1)
    for index in range(len(results), rows * columns):
        axes[index // columns, 2 * (index % columns)].axis("off")
        axes[index // columns, 2 * (index % columns) + 1].axis("off")
    handles = [
        plt.Line2D([], [], color=color, marker="o", mec="k", lw=1.4, label=f"start ({s[0]:g}, {s[1]:g})")
        for s, color in zip(starts, colors, strict=True)
    ]
    handles.append(plt.Line2D([], [], color="0.3", marker="*", ms=10, lw=0, label="end"))
    handles.append(plt.Line2D([], [], color="tab:olive", lw=2.5, label="Pareto set / front"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(
        "CAGrad toy problem (Liu et al. 2021): each method from 5 starts. "
        "Left: x-space over the contour of (L₁ + L₂)/2; right: loss space (L₁, L₂). " + subtitle,
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _wrap(text: str, width: int = 48) -> str:
    if len(text) <= width:
        return text
    cut = text.rfind(", ", 0, width)
    return text if cut < 0 else text[: cut + 1] + "\n" + text[cut + 2 :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/toy_pareto.png"), help="PNG to write")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Adam steps per run")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate")
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), help="name or name:key=value,... (registry)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the final points and losses")
    parser.add_argument("--front-tol", type=float, default=FRONT_TOL, help="'on the front' tolerance")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        methods = [parse_method(spec) for spec in args.methods]
    except ValueError as error:
        parser.error(str(error))

    starts = np.asarray(STARTS)
    began = time.perf_counter()
    combiners = [make(name, **hparams) for name, hparams in methods for _ in starts]
    paths = run_trajectories(combiners, np.tile(starts, (len(methods), 1)), args.steps, args.lr)
    seconds = time.perf_counter() - began

    grid = loss_grid()
    front = pareto_front(grid)
    results = []
    for m, (spec, (name, hparams)) in enumerate(zip(args.methods, methods, strict=True)):
        method_paths = paths[m * len(starts) : (m + 1) * len(starts)]
        with torch.no_grad():
            loss_paths = toy_losses(torch.as_tensor(method_paths)).numpy()
        final = loss_paths[:, -1]
        gaps = front_gap(final, front)
        results.append(
            {
                "method": spec,
                "name": name,
                "hparams": hparams,
                "repr": repr(combiners[m * len(starts)]),
                "paths": method_paths,
                "loss_paths": loss_paths,
                "on_front": int((gaps <= args.front_tol).sum()),
                "runs": [
                    {
                        "start": start.tolist(),
                        "end": path[-1].tolist(),
                        "losses": losses.tolist(),
                        "front_gap": float(gap),
                        "on_front": bool(gap <= args.front_tol),
                    }
                    for start, path, losses, gap in zip(starts, method_paths, final, gaps, strict=True)
                ],
                "mean_loss": float(final.mean()),
                "max_loss": float(final.max(axis=1).mean()),
            }
        )

    subtitle = f"Adam, lr={args.lr:g}, {args.steps} steps."
    _plot(args.out, results, grid, front, starts, subtitle)

    width = max(len(r["method"]) for r in results)
    runs = f"{len(results)} methods x {len(starts)} starts"
    print(f"{runs}, {args.steps} Adam steps at lr={args.lr:g}: {seconds:.1f} s")
    print(f"{'method':<{width}}  on front  mean (L1+L2)/2  mean max(L1,L2)")
    for r in results:
        on_front = f"{r['on_front']}/{len(starts)}"
        print(f"{r['method']:<{width}}  {on_front:>8}  {r['mean_loss']:>14.3f}  {r['max_loss']:>15.3f}")
    print(f"wrote {args.out}")
    if args.json is not None:
        record = {
            "steps": args.steps,
            "lr": args.lr,
            "front_tol": args.front_tol,
            "loss_shift_for_loss_based": LOSS_SHIFT,
            "methods": [{k: v for k, v in r.items() if k not in ("paths", "loss_paths")} for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    sys.exit(main())
