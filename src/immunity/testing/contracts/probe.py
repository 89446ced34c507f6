"""The `Prober` contract: what a switch relies on from verify and warm-up.

* `verify` returns once the host answers its health check as expected; `warm_up` once it
  answered enough warm requests in a row. Both ask the host for real (it counts them).
* Neither gives up on its own while waiting can help: a host that does not answer, answers
  an unexpected status, or answers too slowly keeps them trying until the caller's deadline,
  which ends them promptly (`TimeoutError`); `last_answer` then says what the host answered
  (the status, or the latency against the bar, or the error).
* A request that takes longer than the prober's own request timeout is given up, and
  `last_answer` says it timed out.
* A path that answers what no switch could pass (a 404) is found by `check_paths` before
  anything is touched, and makes `warm_up` fail at once (`StepFailed`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import anyio
import pytest

from immunity.domain import HostRef
from immunity.errors import StepFailed
from immunity.probe.base import Prober
from immunity.testing.contracts.base import Contract, Stopwatch

PROMPT_S = 1.0
"""How late past the caller's deadline a probe may end."""


class ProberHarness(ABC):
    """Probers under test, each with a host in a given condition. `consecutive` is the
    number of warm answers in a row the probers ask for."""

    consecutive: int = 3
    deadline_s: float = 1.0
    """The caller's deadline in the cases that wait it out (above the request timeout of
    `hung`)."""

    @abstractmethod
    async def ready(self) -> tuple[Prober, HostRef]:
        """A host that passes its health check and answers warm-up fast."""

    @abstractmethod
    async def answered(self, host: HostRef) -> int:
        """Requests the host itself answered so far (its own count)."""

    @abstractmethod
    async def down(self) -> tuple[Prober, HostRef]:
        """A host where nothing answers."""

    @abstractmethod
    async def unhealthy(self) -> tuple[Prober, HostRef, str]:
        """A host whose health check answers a status the prober does not expect; the
        status as `last_answer` should name it (e.g. "503")."""

    @abstractmethod
    async def slow(self) -> tuple[Prober, HostRef]:
        """A host that answers warm-up correctly but slower than the latency bar."""

    @abstractmethod
    async def hung(self) -> tuple[Prober, HostRef]:
        """A host that takes longer than the prober's request timeout to answer warm-up,
        itself shorter than `deadline_s`."""

    @abstractmethod
    async def wrong_path(self) -> tuple[Prober, HostRef]:
        """A host whose verify and warm-up paths answer 404."""


class ProberContract(Contract):
    """Subclass with a `harness` fixture returning a `ProberHarness`."""

    async def test_is_a_prober(self, harness: ProberHarness) -> None:
        """The adapter satisfies the role's Protocol."""
        prober, _ = await harness.ready()
        assert isinstance(prober, Prober)

    async def test_verify_and_warm_up_ask_a_ready_host_for_real(
        self, harness: ProberHarness
    ) -> None:
        """Against a ready host both return well within the deadline, and the host counted
        at least one request for verify and `consecutive` for warm-up; nothing to report."""
        prober, host = await harness.ready()
        before = await harness.answered(host)
        with anyio.fail_after(10):
            await prober.verify(host)
        after_verify = await harness.answered(host)
        assert after_verify >= before + 1
        with anyio.fail_after(10):
            await prober.warm_up(host)
        assert await harness.answered(host) >= after_verify + harness.consecutive
        assert prober.last_answer(host) is None
        assert list(await prober.check_paths([host])) == []

    async def _waits_out(self, h: ProberHarness, prober: Prober, host: HostRef, step: str) -> str:
        clock = Stopwatch()
        with pytest.raises(TimeoutError), anyio.fail_after(h.deadline_s):
            await (prober.verify(host) if step == "verify" else prober.warm_up(host))
        assert h.deadline_s - 0.05 <= clock.s < h.deadline_s + PROMPT_S
        answer = prober.last_answer(host)
        assert answer, f"{step}: last_answer says nothing after the deadline"
        return answer

    async def test_a_host_that_does_not_answer_keeps_verify_trying_until_the_deadline(
        self, harness: ProberHarness
    ) -> None:
        """Nothing listens: verify and warm-up keep trying until the caller's deadline ends
        them, and `last_answer` says why."""
        prober, host = await harness.down()
        await self._waits_out(harness, prober, host, "verify")
        await self._waits_out(harness, prober, host, "warmup")

    async def test_an_unexpected_status_is_reported(self, harness: ProberHarness) -> None:
        """verify keeps trying a host that answers an unexpected status until the deadline;
        `last_answer` names that status."""
        prober, host, status = await harness.unhealthy()
        assert status in await self._waits_out(harness, prober, host, "verify")

    async def test_a_slow_host_is_not_warm_and_its_latency_is_reported(
        self, harness: ProberHarness
    ) -> None:
        """Answers slower than the bar never make a host warm: warm-up waits out the
        deadline, and `last_answer` gives the latency it measured (ms) against the bar."""
        prober, host = await harness.slow()
        answer = await self._waits_out(harness, prober, host, "warmup")
        assert "ms" in answer and "bar" in answer

    async def test_a_request_past_the_request_timeout_is_given_up(
        self, harness: ProberHarness
    ) -> None:
        """A host slower than the prober's own request timeout: the request is given up
        (`last_answer` says it timed out) before the caller's deadline ends the warm-up."""
        prober, host = await harness.hung()
        assert "timeout" in (await self._waits_out(harness, prober, host, "warmup")).lower()

    async def test_a_path_that_answers_404_is_found_before_a_switch(
        self, harness: ProberHarness
    ) -> None:
        """`check_paths` names the host and the status; `warm_up` raises `StepFailed` at once
        (no cold start explains a 404), well before the caller's deadline."""
        prober, host = await harness.wrong_path()
        lines = list(await prober.check_paths([host]))
        assert lines and all(host.name in line and "404" in line for line in lines)
        clock = Stopwatch()
        with pytest.raises(StepFailed) as info, anyio.fail_after(10):
            await prober.warm_up(host)
        assert clock.s < 5
        assert "404" in info.value.message
