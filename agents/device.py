"""Which torch device the agent trains on, and what the ``auto`` speed switches mean on it.

``device="auto"`` is CUDA when available, else the CPU. A speed switch (``agent.cuda_graph``,
``agent.overlap_env_steps``) set to ``"auto"`` is on with CUDA and off on the CPU: on a GPU the
update is bound by kernel launches and the host is free while it runs, so replaying a recorded
graph and stepping the simulators meanwhile both pay; on the CPU the update is the whole cost.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "resolve_switch"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else the CPU; anything else is checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:<index>") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for but CUDA is not available here; use device=cpu or auto"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; allowed: auto, cpu, cuda, cuda:<index>")
    return resolved


def resolve_switch(value: bool | str, device: torch.device) -> bool:
    """A speed switch's value on ``device``: ``"auto"`` is on with CUDA, off on the CPU."""
    if value == "auto":
        return device.type == "cuda"
    return bool(value)

