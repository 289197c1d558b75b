"""mtrl_fair.monitor.one_torch_thread: torch on one thread inside, its own setting back after."""

from __future__ import annotations

import pytest
import torch

from mtrl_fair.monitor import one_torch_thread


def test_one_thread_inside_and_the_setting_restored_after_an_error() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), one_torch_thread():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
