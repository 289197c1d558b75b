"""What a run's ``auto`` values become on this machine, said once when it starts.

On a GPU the update is bound by kernel launches and the host is idle while it runs, so the fast
path is on by default: the update replayed from a CUDA graph, the simulators stepped in their own
processes (``async``) and during the update (overlap), and one torch thread in the trainer so that
torch's thread pool does not compete with the simulators for cores. On the CPU the update is the
whole cost and nothing changes. The resolved values are what ``config.yaml`` records.
"""

from __future__ import annotations

import copy

import torch

from mtrl_fair.agents.device import resolve_device, resolve_switch
from mtrl_fair.config import TrainConfig
from mtrl_fair.envs.benchmarks import resolve_vector_strategy

__all__ = ["resolve_run_settings"]


def resolve_run_settings(
    cfg: TrainConfig, *, device: torch.device | None = None, cores: int | None = None
) -> tuple[TrainConfig, list[str]]:
    """A copy of ``cfg`` with every ``auto`` speed value resolved, and the lines that say so.

    The first line lists the settings; each further line is a fallback or an override that has no
    effect (a CUDA graph asked for on the CPU, async envs without the cores for them). ``device``
    and ``cores`` default to ``cfg.device`` resolved here and this process's cores.
    """
    resolved = copy.deepcopy(cfg)
    device = resolve_device(cfg.device) if device is None else device
    on_gpu = device.type == "cuda"
    notes = []
    graph = resolve_switch(cfg.agent.cuda_graph, device)
    if graph and not on_gpu:
        notes.append("note: agent.cuda_graph=true has no effect on the CPU; the update runs eagerly")
        graph = False
    overlap = resolve_switch(cfg.agent.overlap_env_steps, device)
    strategy, why = resolve_vector_strategy(cfg.benchmark.vector_strategy, gpu=on_gpu, cores=cores)
    if cfg.benchmark.vector_strategy == "auto" and on_gpu and strategy == "sync":
        notes.append(f"note: benchmark.vector_strategy=auto chose sync envs: {why}")
    threads = (1 if on_gpu else torch.get_num_threads()) if cfg.torch_threads == "auto" else int(cfg.torch_threads)

    resolved.device = str(device)
    resolved.agent.cuda_graph = graph
    resolved.agent.overlap_env_steps = overlap
    resolved.benchmark.vector_strategy = strategy
    resolved.torch_threads = threads
    parts = [
        f"device {device}",
        "update replayed from a CUDA graph" if graph else "eager update",
        "env steps overlapped with the update" if overlap else "env steps before the update",
        f"{strategy} envs" + (f" ({why})" if cfg.benchmark.vector_strategy == "auto" else ""),
        f"{threads} torch thread{'s' if threads != 1 else ''}",
        f"matmul precision {cfg.agent.matmul_precision}",
    ]
    return resolved, ["settings: " + ", ".join(parts), *notes]
