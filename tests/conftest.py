"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models train and run fastest on one torch thread, above all on the 2 cores the
    suite shares; a module that asks for it gets one, and the old setting back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
