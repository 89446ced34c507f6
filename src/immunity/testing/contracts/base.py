"""What every contract suite shares: the anyio backend, known gaps as strict xfails."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar

import anyio
import pytest


class Unsupported(Exception):
    """A harness cannot do what a case needs (moto routes no traffic...): the case's XFAIL."""


class Contract:
    """Base of the suites. `XFAIL`: case name -> why this adapter cannot honour it."""

    XFAIL: ClassVar[Mapping[str, str]] = {}
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture(autouse=True)
    def _known_gaps(self, request: pytest.FixtureRequest) -> None:
        reason = self.XFAIL.get(request.function.__name__)
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


async def eventually(
    check: Callable[[], Awaitable[bool]], deadline_s: float, what: str, pause_s: float = 0.05
) -> None:
    """Poll `check` until it is true; fail naming `what` after `deadline_s` seconds."""
    with anyio.move_on_after(deadline_s):
        while not await check():  # noqa: ASYNC110 - polling a server's view, no event to wait on
            await anyio.sleep(pause_s)
        return
    pytest.fail(f"not within {deadline_s} s: {what}")


class Stopwatch:
    """Real seconds since it was made (`time.monotonic`)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    @property
    def s(self) -> float:
        return time.monotonic() - self.t0
