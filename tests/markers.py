"""Markers shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

Test = TypeVar("Test", bound=Callable[..., object])


def requires_cuda(test: Test) -> Test:
    """A GPU test: marked ``gpu`` (``pytest -m gpu`` runs them) and skipped where CUDA is absent."""
    skipped = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test)
    return pytest.mark.gpu(skipped)  # type: ignore[no-any-return]
