"""The `Notifier` contract: what the engine relies on from a notifier.

* `wants` follows the `events` filter: by default every final outcome (`deployment.*`); a
  narrowed filter wants only what it names.
* `notify(event)` delivers the event once, naming its app and release, as the receiver
  itself records it (the HTTP server's requests, the Pushgateway's pushes, the StatsD
  agent's datagrams).
* Every final outcome the engine sends (`deployment.<RunOutcome.past>`) is delivered with
  `data` as the engine builds it at the end of a run that stopped early: every key present
  and None (`engine/run.py`, `Run._close`), or no data at all.
* A receiver that refuses or cannot be reached is a `NotifyError` (the engine journals it
  and carries on; any other exception would end the run's finish), and neither the error's
  message, its dict nor its traceback holds a secret (a webhook URL, a token, a password).
* `notify` ends by the caller's deadline when the receiver accepts and never answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Sequence

import anyio
import pytest

from immunity.domain import Event
from immunity.engine.result import NOTIFIED, RunOutcome
from immunity.errors import NotifyError
from immunity.notify.base import Notifier
from immunity.testing.contracts.base import Contract

DEADLINE_S = 0.3
"""The caller's deadline in the hanging-receiver case."""
PROMPT_S = 2.0
"""How soon after it a cancelled `notify` must have returned."""

FINAL_KINDS = sorted({f"deployment.{o.past}" for o in RunOutcome})
"""Every kind the engine sends a notifier (`engine/run.py`, `Run._close`)."""
ENGINE_KEYS = NOTIFIED
"""The `data` keys the engine fills from a run's result (`engine/result.py`)."""


def event(kind: str = "deployment.reverted", *, full: bool = True) -> Event:
    """An event as the engine sends it: `full` with a verdict, timings and fallbacks, else
    the way a run that stopped early fills it (every key None)."""
    data: dict[str, object] = {k: None for k in ENGINE_KEYS}
    if full:
        data.update(
            outcome=kind.removeprefix("deployment."),
            release="v2",
            detected_after_s=6.4,
            reverted_after_s=9.1,
            needs_human=[],
            duration_s=31.0,
            fallbacks={"web1": "v1", "web2": "v1"},
            verdict={"outcome": "fail", "reason": "canary 5xx rate 5.1% vs 0.2%", "checks": []},
        )
    return Event(
        kind=kind,
        app="shopfront",
        deployment_id="d-20261130-0001",
        release="v2",
        message="canary 5xx rate 5.1% vs baseline 0.2%",
        at=dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC),
        data=data,
    )


class NotifierHarness(ABC):
    """The notifier under test (default `events`) and its receiver's own record."""

    notifier: Notifier
    secrets: Sequence[str] = ()
    """Strings that must never show in an error (URL paths with tokens, passwords)."""

    @abstractmethod
    async def deliveries(self) -> list[str]:
        """What the receiver holds now: one text per delivered event, in order of arrival
        (a request body, a push, the datagrams of one event joined)."""

    @abstractmethod
    def with_events(self, events: list[str]) -> Notifier:
        """The same notifier, to the same receiver, with `events` set."""

    @abstractmethod
    def refusing(self) -> Notifier:
        """The same kind of notifier pointed at a receiver that refuses it (answers 5xx, or
        cannot be reached), with the fewest retries its settings allow."""

    @abstractmethod
    def hanging(self) -> Notifier:
        """The same kind pointed at a receiver that accepts and never answers."""


async def _delivered(h: NotifierHarness, n: int) -> list[str]:
    """The receiver's record once it holds `n` deliveries (datagrams arrive on their own
    time); fails after 5 s."""
    with anyio.move_on_after(5):
        while len(got := await h.deliveries()) < n:  # noqa: ASYNC110 - the receiver's record
            await anyio.sleep(0.02)
        return got
    return await h.deliveries()


class NotifierContract(Contract):
    """Subclass with a `harness` fixture returning a `NotifierHarness`."""

    async def test_is_a_notifier(self, harness: NotifierHarness) -> None:
        """The adapter satisfies the role's Protocol and has a name."""
        assert isinstance(harness.notifier, Notifier)
        assert harness.notifier.name

    async def test_wants_follows_the_events_filter(self, harness: NotifierHarness) -> None:
        """By default every final outcome is wanted; `events: [deployment.reverted]` wants
        only a revert, `!deployment.succeeded` everything else."""
        for kind in FINAL_KINDS:
            assert harness.notifier.wants(event(kind)), kind
        only = harness.with_events(["deployment.reverted"])
        but = harness.with_events(["deployment.*", "!deployment.succeeded"])
        try:
            assert only.wants(event("deployment.reverted"))
            assert not only.wants(event("deployment.succeeded"))
            assert not but.wants(event("deployment.succeeded"))
            assert but.wants(event("deployment.failed"))
        finally:
            await only.aclose()
            await but.aclose()

    async def test_an_event_is_delivered_once_naming_app_and_release(
        self, harness: NotifierHarness
    ) -> None:
        """One `notify`: the receiver records one delivery, naming the app and release."""
        before = len(await harness.deliveries())
        with anyio.fail_after(10):
            await harness.notifier.notify(event())
        await _delivered(harness, before + 1)
        await anyio.sleep(0.1)  # a second (duplicate) delivery would arrive by now
        got = await harness.deliveries()
        assert len(got) == before + 1, got[before:]
        assert "shopfront" in got[-1] and "v2" in got[-1], got[-1]

    async def test_every_final_outcome_is_delivered_as_the_engine_fills_it(
        self, harness: NotifierHarness
    ) -> None:
        """Each kind the engine sends, with the data of a run that stopped early (every key
        None) and with none at all: delivered, no other exception."""
        before = len(await harness.deliveries())
        sent = 0
        for kind in FINAL_KINDS:
            for ev in (event(kind, full=False), dataclasses.replace(event(kind), data={})):
                with anyio.fail_after(10):
                    await harness.notifier.notify(ev)
                sent += 1
        got = await _delivered(harness, before + sent)
        assert len(got) == before + sent

    async def test_a_refusing_receiver_is_a_notify_error_without_secrets(
        self, harness: NotifierHarness
    ) -> None:
        """A receiver that refuses (or cannot be reached): `NotifyError` with a message,
        within a deadline; no secret in its message, dict or traceback."""
        n = harness.refusing()
        try:
            with pytest.raises(NotifyError) as info, anyio.fail_after(20):
                await n.notify(event())
        finally:
            await n.aclose()
        assert info.value.message
        shown = (
            info.value.message
            + json.dumps(info.value.to_dict(), default=str)
            + "".join(traceback.format_exception(info.value))
        )
        for secret in harness.secrets:
            assert secret not in shown, f"{secret!r} shown in the error"

    async def test_notify_ends_by_the_callers_deadline(self, harness: NotifierHarness) -> None:
        """A receiver that accepts and never answers: `notify` under the caller's deadline
        returns promptly after it (cancelled), or earlier with a `NotifyError`."""
        n = harness.hanging()
        t0 = time.monotonic()
        try:
            with anyio.move_on_after(DEADLINE_S), contextlib.suppress(NotifyError):
                await n.notify(event())
        finally:
            with anyio.fail_after(PROMPT_S):
                await n.aclose()
        assert time.monotonic() - t0 < DEADLINE_S + PROMPT_S
