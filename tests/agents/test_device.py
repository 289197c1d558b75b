"""Tests of mtrl_fair.agents.device: ``auto`` and explicit device names, refused before anything starts."""

from __future__ import annotations

import pytest
import torch
from agent_builders import make_agent

from mtrl_fair.agents.device import resolve_device


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_resolve_device_cuda_without_cuda(device: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available") as info:
        resolve_device(device)
    assert "device=cpu" in str(info.value)
    with pytest.raises(ValueError, match="CUDA is not available"):
        make_agent(device=device)


@pytest.mark.parametrize("device", ["tpu", "gpu", "", "cuda:x"])
def test_resolve_device_unknown(device: str) -> None:
    with pytest.raises(ValueError, match=r"allowed: auto, cpu, cuda") as info:
        resolve_device(device)
    assert "\n" not in str(info.value)


def test_resolve_device_unsupported_kind() -> None:
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        resolve_device("meta")


def test_auto_switches_are_on_with_cuda_and_off_on_the_cpu() -> None:
    from mtrl_fair.agents.device import resolve_switch

    assert resolve_switch("auto", torch.device("cuda")) is True
    assert resolve_switch("auto", torch.device("cpu")) is False
    for device in ("cpu", "cuda"):
        assert resolve_switch(True, torch.device(device)) is True
        assert resolve_switch(False, torch.device(device)) is False


def test_the_agent_resolves_its_speed_switches_on_the_cpu() -> None:
    agent = make_agent(device="cpu")
    assert agent.config.cuda_graph == "auto"
    assert agent.use_cuda_graph is False
    assert agent.overlap_env_steps is False
    forced = make_agent(device="cpu", cuda_graph=True, overlap_env_steps=True)
    assert forced.use_cuda_graph is False  # never on the CPU
    assert forced.overlap_env_steps is True
