"""Meta-World benchmarks and evaluation, installed as ``mtrl_fair.envs``.

- :func:`make_vector_env` builds MT10/MT50 (or a subset of their tasks) as one gymnasium vector env,
  one sub-env per task, each observation followed by the one-hot task id.
- :func:`final_observations` recovers the real last observation of episodes that the vector env
  reset within the step (what a replay buffer stores as next observation).
- :func:`evaluate` runs Meta-World's evaluation protocol on any policy with stable-baselines3's
  ``predict`` and returns an :class:`EvalResult`.

- :func:`~mtrl_fair.envs.video.record_videos` records a policy's episodes as one MP4 per task;
  :mod:`~mtrl_fair.envs.rendering` picks and checks the OpenGL backend that draws them.

Envs know nothing of agents: this package imports gymnasium and metaworld, never torch.
"""

from .rendering import RenderingError, import_mujoco

import_mujoco()  # before Meta-World imports it: a missing OpenGL library is one line, not a traceback

from .benchmarks import (  # noqa: E402
    BENCHMARKS,
    benchmark_tasks,
    final_observations,
    make_vector_env,
    resolve_tasks,
    resolve_vector_strategy,
    vector_env_task_names,
)
from .evaluation import EvalResult, evaluate  # noqa: E402

__all__ = [
    "BENCHMARKS",
    "EvalResult",
    "RenderingError",
    "benchmark_tasks",
    "evaluate",
    "final_observations",
    "make_vector_env",
    "resolve_tasks",
    "resolve_vector_strategy",
    "vector_env_task_names",
]
