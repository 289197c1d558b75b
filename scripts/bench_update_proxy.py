"""A CPU proxy of the GPU update's cost: operations and host time of one MTSAC update, tiny networks.

On a GPU the update is bound by kernel launches, not arithmetic: its time follows the number of
operations it dispatches (each a kernel launch eagerly; each a node of the CUDA graph when replayed)
and the host time spent dispatching them. Both show on a CPU with networks so small that the
arithmetic is negligible (3×32 MLPs, 4 transitions per task, one thread), so progress can be
tracked without a GPU. For each method, measured side by side in one run:

- ``ops``: aten operations dispatched at the top level (not counting those nested inside another
  aten operation) that are not pure views or metadata (``view``, ``reshape``, ``transpose``,
  ``detach``, ...), which launch no kernel on a GPU;
- ``ops_all``: every aten operation, views and nested ones included;
- ``host_ms``: the median host time of one update (a fresh batch sampled, then the update), the
  methods interleaved repeat by repeat.

Methods: ``mean`` (plain multi-task SAC), each combiner given (its per-task gradients from one
backward pass, as the agent computes them), and with ``--vmap`` the same combiners with the
per-task gradients from ``torch.func.vmap`` over a per-task loss (the path of earlier releases):
the before and after of the batched-products Jacobian, in one run. With ``--pack S``, also S
FairGrad runs updated one after the other and the same S runs updated as one pack
(:class:`~mtrl_fair.agents.packed.PackedMTSAC`).

    python scripts/bench_update_proxy.py --json docs/results/update_proxy_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.spaces import Box
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from mtrl_fair.agents import MTSAC, MTSACConfig
from mtrl_fair.agents.packed import PackedMTSAC, RunSpec
from mtrl_fair.agents.sac_update import SACUpdate
from mtrl_fair.agents.spaces import TaskSpaces
from mtrl_fair.jacobian import CombinedGradient, backward_per_task_func

# Operations that only make a new view of existing memory (or read metadata): no kernel on a GPU.
VIEW_OPS = frozenset(
    "aten::" + name
    for name in (
        "view reshape _reshape_alias _unsafe_view transpose t permute expand expand_as unsqueeze squeeze "
        "select slice narrow split split_with_sizes chunk unbind as_strided alias detach diagonal "
        "view_as flatten movedim contiguous resolve_conj resolve_neg lift_fresh empty empty_like "
        "empty_strided result_type is_nonzero to"
    ).split()
)
OBS_STATE = 39
ACTION_DIM = 4


class VmapUpdate(SACUpdate):
    """The SAC update with every per-task Jacobian from ``torch.func.vmap`` (no layer path)."""

    def backward(
        self,
        group: str,
        loss_fn: Callable[[dict[str, Tensor] | None, Any], Any],
        params: dict[str, Tensor],
        task_batch: tuple[Tensor, ...],
        *,
        module: nn.Module,
        diagnostics: bool,
        has_aux: bool,
        batched_loss: Callable[[], Any],
    ) -> tuple[CombinedGradient, Any]:
        result = backward_per_task_func(
            loss_fn,
            params,
            task_batch,
            self._combiner_for(group),
            diagnostics=diagnostics,
            chunk_size=self.config.chunk_size,
            randomness="error",
            has_aux=has_aux,
            batched_loss=batched_loss,  # the mean shortcut still uses it, as in earlier releases
        )
        return result if has_aux else (result, None)


class VmapMTSAC(MTSAC):
    update_class = VmapUpdate


def make_agent(combiner: str, vmap: bool, args: argparse.Namespace) -> MTSAC:
    num_tasks = args.tasks
    cls = VmapMTSAC if vmap else MTSAC
    agent = cls(
        num_tasks=num_tasks,
        observation_space=Box(-np.inf, np.inf, (OBS_STATE + num_tasks,), np.float64),
        action_space=Box(-1.0, 1.0, (ACTION_DIM,), np.float32),
        combiner=combiner,
        config=MTSACConfig(
            hidden_sizes=[args.hidden] * 3,
            batch_size_per_task=args.batch_per_task,
            buffer_size_per_task=256,
            warmup_steps=0,
        ),
        device="cpu",
        seed=0,
    )
    rng = np.random.default_rng(0)
    one_hot = np.eye(num_tasks)
    for _ in range(256):
        obs = np.concatenate([rng.normal(size=(num_tasks, OBS_STATE)), one_hot], axis=1)
        next_obs = np.concatenate([rng.normal(size=(num_tasks, OBS_STATE)), one_hot], axis=1)
        agent.replay_buffer.add(
            obs, rng.uniform(-1, 1, (num_tasks, ACTION_DIM)), rng.normal(size=num_tasks), next_obs, np.zeros(num_tasks)
        )
    return agent


def make_pack(runs: int, args: argparse.Namespace) -> PackedMTSAC:
    """A pack of ``runs`` FairGrad runs (α = 2, seeds 0..runs-1) with full replay buffers."""
    num_tasks = args.tasks
    spaces = TaskSpaces(
        tuple(f"task-{k}" for k in range(num_tasks)),
        OBS_STATE + num_tasks,
        np.full(ACTION_DIM, -1.0, np.float32),
        np.full(ACTION_DIM, 1.0, np.float32),
    )
    pack = PackedMTSAC(
        None,
        [RunSpec(seed, {"alpha": 2.0}) for seed in range(runs)],
        combiner="fairgrad",
        config=MTSACConfig(
            hidden_sizes=[args.hidden] * 3, batch_size_per_task=args.batch_per_task, buffer_size_per_task=256
        ),
        device="cpu",
        spaces=spaces,
    )
    rng = np.random.default_rng(0)
    one_hot = np.broadcast_to(np.eye(num_tasks), (runs, num_tasks, num_tasks))
    for _ in range(256):
        pack.replay_buffer.add(
            obs=np.concatenate([rng.normal(size=(runs, num_tasks, OBS_STATE)), one_hot], axis=2),
            action=rng.uniform(-1, 1, (runs, num_tasks, ACTION_DIM)),
            reward=rng.normal(size=(runs, num_tasks)),
            next_obs=np.concatenate([rng.normal(size=(runs, num_tasks, OBS_STATE)), one_hot], axis=2),
            terminated=np.zeros((runs, num_tasks)),
        )
    return pack


def one_update(agent: MTSAC) -> None:
    """What the training loop does for an update outside diagnostics iterations."""
    agent.update(agent.replay_buffer.sample(agent.config.batch_size_per_task))


def updates_one_by_one(agents: list[MTSAC]) -> None:
    for agent in agents:
        one_update(agent)


def packed_update(pack: PackedMTSAC) -> None:
    pack.update(pack.replay_buffer.sample(pack.config.batch_size_per_task, pack.generators))


def count_ops(step: Callable[[], None]) -> tuple[int, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [
        e
        for e in events
        if (e.cpu_parent is None or not str(e.cpu_parent.name).startswith("aten::")) and e.name not in VIEW_OPS
    ]
    return len(top), len(events)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combiners", nargs="+", default=["fairgrad", "pcgrad", "mgda"])
    parser.add_argument("--vmap", action="store_true", help="also each combiner on the vmap path (before)")
    parser.add_argument("--tasks", type=int, default=10, help="K (10: MT10, 50: MT50)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-per-task", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--pack", type=int, default=1, help="also S FairGrad runs updated one by one and packed (S > 1)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    agents: dict[str, MTSAC] = {"mean": make_agent("mean", False, args)}
    for name in args.combiners:
        agents[name] = make_agent(name, False, args)
        if args.vmap:
            agents[f"{name}/vmap"] = make_agent(name, True, args)
    methods: dict[str, Callable[[], None]] = {
        name: functools.partial(one_update, agent) for name, agent in agents.items()
    }
    if args.pack > 1:
        solos = [make_agent("fairgrad", False, args) for _ in range(args.pack)]
        methods[f"fairgrad x{args.pack} one by one"] = functools.partial(updates_one_by_one, solos)
        methods[f"fairgrad x{args.pack} packed"] = functools.partial(packed_update, make_pack(args.pack, args))
    for step in methods.values():
        for _ in range(args.warmup):
            step()
    ops = {name: count_ops(step) for name, step in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):  # interleaved: a drift of the machine affects every method alike
        for name, step in methods.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)

    base_ops, base_all = ops["mean"]
    base_ms = statistics.median(times["mean"])
    records = []
    print(f"K={args.tasks}, 3x{args.hidden} MLPs, {args.batch_per_task} transitions per task, 1 thread, torch {torch.__version__}")
    print(f"{'method':24s} {'ops':>6s} {'×mean':>6s} {'ops_all':>8s} {'×mean':>6s} {'host ms':>8s} {'×mean':>6s}")
    for name in methods:
        top, every = ops[name]
        host_ms = statistics.median(times[name])
        records.append(
            {
                "method": name,
                "K": args.tasks,
                "ops": top,
                "ops_all": every,
                "host_ms": host_ms,
                "ops_ratio_to_mean": top / base_ops,
                "ops_all_ratio_to_mean": every / base_all,
                "host_ms_ratio_to_mean": host_ms / base_ms,
            }
        )
        print(
            f"{name:24s} {top:6d} {top / base_ops:6.2f} {every:8d} {every / base_all:6.2f} "
            f"{host_ms:8.2f} {host_ms / base_ms:6.2f}"
        )
    if args.json is not None:
        meta = {
            "device": "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "hidden": args.hidden,
            "batch_per_task": args.batch_per_task,
            "repeats": args.repeats,
            "threads": 1,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
