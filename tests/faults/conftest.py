"""The fault suite: one torch thread per process (two shared cores; tiny models gain nothing from more)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
