"""Shared fixtures: tiny backbones so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

# Small enough for milliseconds per forward, deep enough to have every layer kind (two stages, downsample).
TINY = dict(layers=[1, 1], widths=[8, 16], embedding_size=16, input_size=16)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_backbone():
    from irface.models import IResNet

    return IResNet(**TINY)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (modules opt in with `pytest.mark.usefixtures`)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for the session (tests/pg_support.py); skipped without the binaries,
    except under CI=true, where that is a failure."""
    import os

    from pg_support import start_server

    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is not installed (pip install 'irface[postgres]')"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        server = start_server()
    except LookupError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL: {e}")
        pytest.skip(str(e))
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server):
    """A URL to a fresh, empty database of the session's PostgreSQL server."""
    return pg_server.url(pg_server.new_database())
