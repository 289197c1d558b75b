"""mtrl_fair.run_settings: the fast path by default on a GPU, nothing changed on the CPU, one line each."""

from __future__ import annotations

import pytest
import torch

from mtrl_fair.config import TrainConfig
from mtrl_fair.run_settings import resolve_run_settings

CUDA = torch.device("cuda")  # a device object needs no GPU: the resolution is tested without one
CPU = torch.device("cpu")


def test_the_defaults_on_a_gpu_machine_are_the_fast_path() -> None:
    cfg, lines = resolve_run_settings(TrainConfig(), device=CUDA, cores=16)
    assert cfg.agent.cuda_graph is True
    assert cfg.agent.overlap_env_steps is True
    assert cfg.benchmark.vector_strategy == "async"
    assert cfg.torch_threads == 1
    assert cfg.device == "cuda"
    assert lines == [
        "settings: device cuda, update replayed from a CUDA graph, env steps overlapped with the update, "
        "async envs (a GPU update and 16 CPU cores), 1 torch thread, matmul precision highest"
    ]


def test_on_the_cpu_nothing_changes() -> None:
    cfg, lines = resolve_run_settings(TrainConfig(device="cpu"), device=CPU, cores=16)
    assert cfg.agent.cuda_graph is False
    assert cfg.agent.overlap_env_steps is False
    assert cfg.benchmark.vector_strategy == "sync"
    assert cfg.torch_threads == torch.get_num_threads()
    assert len(lines) == 1
    assert lines[0].startswith("settings: device cpu, eager update, env steps before the update, sync envs")


def test_too_few_cores_for_async_envs_is_said_in_one_line() -> None:
    cfg, lines = resolve_run_settings(TrainConfig(), device=CUDA, cores=2)
    assert cfg.benchmark.vector_strategy == "sync"
    assert cfg.agent.cuda_graph is True
    assert lines[1:] == [
        "note: benchmark.vector_strategy=auto chose sync envs: only 2 CPU cores (async envs need at least 4)"
    ]


def test_explicit_values_win_and_a_graph_on_the_cpu_is_said() -> None:
    base = TrainConfig(device="cpu", torch_threads=3)
    base.agent.cuda_graph = True
    base.agent.overlap_env_steps = True
    base.benchmark.vector_strategy = "async"
    cfg, lines = resolve_run_settings(base, device=CPU, cores=2)
    assert cfg.agent.cuda_graph is False
    assert cfg.agent.overlap_env_steps is True
    assert cfg.benchmark.vector_strategy == "async"
    assert cfg.torch_threads == 3
    assert "note: agent.cuda_graph=true has no effect on the CPU; the update runs eagerly" in lines
    off = TrainConfig()
    off.agent.cuda_graph = False
    off.agent.overlap_env_steps = False
    off.benchmark.vector_strategy = "sync"
    cfg, _ = resolve_run_settings(off, device=CUDA, cores=16)
    assert (cfg.agent.cuda_graph, cfg.agent.overlap_env_steps, cfg.benchmark.vector_strategy) == (False, False, "sync")


def test_the_input_config_is_left_as_it_was() -> None:
    cfg = TrainConfig()
    resolve_run_settings(cfg, device=CUDA, cores=16)
    assert (cfg.agent.cuda_graph, cfg.benchmark.vector_strategy, cfg.torch_threads) == ("auto", "auto", "auto")


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_the_matmul_precision_is_in_the_line(precision: str) -> None:
    cfg = TrainConfig()
    cfg.agent.matmul_precision = precision
    assert f"matmul precision {precision}" in resolve_run_settings(cfg, device=CUDA, cores=16)[1][0]
