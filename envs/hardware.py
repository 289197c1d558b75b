"""What the machine offers the simulators: CPU cores for worker processes, and whether a GPU is there.

Read without torch (envs never import it): the cores this process may run on, and whether an
NVIDIA driver is loaded. The vector env's ``auto`` strategy and the choice of MuJoCo's rendering
backend follow from them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_cores", "gpu_driver_present"]

_NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_driver_present() -> bool:
    """Whether an NVIDIA GPU driver is loaded on this machine."""
    return any(Path(path).exists() for path in _NVIDIA_DRIVER_FILES)
