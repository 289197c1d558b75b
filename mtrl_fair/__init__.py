"""mtrl-fair: multi-task reinforcement learning with fast, exact gradient combiners.

``mtrl_fair.evaluate`` and ``mtrl_fair.EvalResult`` are loaded on first use, so that ``import
mtrl_fair`` (and with it the combiners) stays light and never imports metaworld or mujoco.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["EvalResult", "__version__", "evaluate"]

# Public name -> module that defines it, imported on first attribute access (PEP 562).
_LAZY_ATTRIBUTES = {
    "EvalResult": "mtrl_fair.envs.evaluation",
    "evaluate": "mtrl_fair.envs.evaluation",
}

if TYPE_CHECKING:
    from mtrl_fair.envs.evaluation import EvalResult, evaluate


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
