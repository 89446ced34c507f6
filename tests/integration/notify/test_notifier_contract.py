"""Every notifier held to the Notifier contract against receivers on 127.0.0.1: Slack, Teams
and the generic webhook against the recording HTTP server, the Pushgateway notifier against
the fake Pushgateway (what it holds per group), StatsD against a real UDP socket (the
datagrams it received). A receiver that never answers is a listening socket nobody accepts
from: the kernel completes the connection and the request waits."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from notify_receivers import Receiver

from immunity.notify.base import Notifier
from immunity.notify.pushgateway import PushgatewayNotifier
from immunity.notify.slack import SlackNotifier
from immunity.notify.statsd import StatsdNotifier
from immunity.notify.teams import TeamsNotifier
from immunity.notify.webhook import WebhookNotifier
from immunity.testing.contracts import NotifierContract, NotifierHarness

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


class UrlHarness(NotifierHarness):
    """Slack, Teams, webhook: the URL (a secret) ends in a token; deliveries are the
    request bodies the receiver recorded at that path."""

    cls: ClassVar[Any]
    path = "/services/T0/B0/T0K3N"
    extra: ClassVar[dict[str, Any]] = {}

    def __init__(self, receiver: Receiver, silent: int) -> None:
        self.receiver = receiver
        self.silent = silent
        self.notifier = self.make(receiver.url(self.path))
        self.secrets = [receiver.url(self.path), "T0K3N", *self.extra.values()]

    def make(self, url: str, **kw: Any) -> Notifier:
        notifier: Notifier = self.cls(self.cls.Settings(url=url, **self.extra, **kw), base_dir=None)
        return notifier

    async def deliveries(self) -> list[str]:
        return [s.body.decode() for s in self.receiver.at(self.path)]

    def with_events(self, events: list[str]) -> Notifier:
        return self.make(self.receiver.url(self.path), events=events)

    def refusing(self) -> Notifier:
        self.receiver.statuses["/refuse/T0K3N"] = [500]
        return self.make(self.receiver.url("/refuse/T0K3N"), retries=0)

    def hanging(self) -> Notifier:
        return self.make(f"http://127.0.0.1:{self.silent}{self.path}", retries=0)


class SlackHarness(UrlHarness):
    cls = SlackNotifier


class TeamsHarness(UrlHarness):
    cls = TeamsNotifier
    path = "/workflows/abc/T0K3N"


class WebhookHarness(UrlHarness):
    cls = WebhookNotifier
    path = "/hook/T0K3N"
    extra: ClassVar[dict[str, Any]] = {"secret": "whsec-contract-0123456789"}


class TestSlackNotifier(NotifierContract):
    @pytest.fixture
    def harness(self, receiver: Receiver, silent: int) -> NotifierHarness:
        return SlackHarness(receiver, silent)


class TestTeamsNotifier(NotifierContract):
    @pytest.fixture
    def harness(self, receiver: Receiver, silent: int) -> NotifierHarness:
        return TeamsHarness(receiver, silent)


class TestWebhookNotifier(NotifierContract):
    @pytest.fixture
    def harness(self, receiver: Receiver, silent: int) -> NotifierHarness:
        return WebhookHarness(receiver, silent)


class PushgatewayHarness(NotifierHarness):
    """Deliveries are the pushes (POST/PUT to /metrics/job/...) the fake Pushgateway took:
    the group's path and the pushed text."""

    PASSWORD = "pw-contract-secret"

    def __init__(self, receiver: Receiver, silent: int) -> None:
        self.receiver = receiver
        self.silent = silent
        self.notifier = self.make(receiver.url(""))
        self.secrets = [self.PASSWORD]

    def make(self, url: str, **kw: Any) -> Notifier:
        settings = PushgatewayNotifier.Settings(
            url=url, username="immunity", password=self.PASSWORD, **kw
        )
        return PushgatewayNotifier(settings, base_dir=None)

    async def deliveries(self) -> list[str]:
        return [
            f"{s.path}\n{s.body.decode()}"
            for s in self.receiver.seen
            if s.method in ("POST", "PUT") and s.path.startswith("/metrics/")
        ]

    def with_events(self, events: list[str]) -> Notifier:
        return self.make(self.receiver.url(""), events=events)

    def refusing(self) -> Notifier:
        self.receiver.statuses["/metrics/"] = [500]
        return self.make(self.receiver.url(""))

    def hanging(self) -> Notifier:
        return self.make(f"http://127.0.0.1:{self.silent}")


class TestPushgatewayNotifier(NotifierContract):
    @pytest.fixture
    def harness(self, receiver: Receiver, silent: int) -> NotifierHarness:
        return PushgatewayHarness(receiver, silent)


class StatsdHarness(NotifierHarness):
    """Deliveries are the datagrams the UDP socket received, one event from its counter
    line (`...:1|c`) to the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.lines: list[str] = []
        self.notifier = self.make()

    def make(self, **kw: Any) -> Notifier:
        port = self.sock.getsockname()[1]
        return StatsdNotifier(StatsdNotifier.Settings(port=port, **kw), base_dir=None)

    async def deliveries(self) -> list[str]:
        while True:
            try:
                self.lines.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        events: list[list[str]] = []
        for line in self.lines:
            if line.split("|")[1:2] == ["c"] or not events:
                events.append([])
            events[-1].append(line)
        return ["\n".join(e) for e in events]

    def with_events(self, events: list[str]) -> Notifier:
        return self.make(events=events)

    def refusing(self) -> Notifier:
        """UDP has no refusal: an agent host that does not resolve."""
        return StatsdNotifier(StatsdNotifier.Settings(host="no-such-host.invalid"), base_dir=None)

    def hanging(self) -> Notifier:
        """A UDP send never waits for the agent: the socket itself, which never reads."""
        return self.make()


class TestStatsdNotifier(NotifierContract):
    @pytest.fixture
    async def harness(self, udp_socket: socket.socket) -> AsyncIterator[NotifierHarness]:
        yield StatsdHarness(udp_socket)
