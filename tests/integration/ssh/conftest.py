"""Fixtures: a real sshd on 127.0.0.1 (see sshd_server.py)."""

import pytest
from sshd_server import sshd

__all__ = ["anyio_backend", "sshd"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
