"""Test-wide settings.

Hypothesis draws its examples from a fixed seed by default (``derandomize``), so a CI run is
reproducible and a red run is never a matter of luck. To search new examples, run
``pytest --hypothesis-profile=explore`` (random seeds, more examples) and turn any failure it finds
into a plain regression test.

``in_process_cli`` is for tests that run ``mtrl_fair.cli.main`` in the test process (to patch what
it calls): the command sets ``sys.argv`` for Hydra, and the small networks of such runs train
several times faster on one thread (as the runs in subprocesses do, with ``OMP_NUM_THREADS=1``).
"""

import sys
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=500)
settings.load_profile("default")


@pytest.fixture
def in_process_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
