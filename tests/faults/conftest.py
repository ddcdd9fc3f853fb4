"""The fault suite: one torch thread per process (two shared cores; tiny models gain nothing from more)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread_for_every_fault_test(one_torch_thread):
    yield
