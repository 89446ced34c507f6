"""Fixtures of the notifier integration tests (receivers live in notify_receivers.py)."""

import pytest
from notify_receivers import receiver, udp_socket

__all__ = ["anyio_backend", "receiver", "udp_socket"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
