"""`CommandSource` held to the SignalSource contract, running the documented example
(docs/adapters/examples/checkout_latency.py): it counts a JSON-lines access log. Sending
traffic is the log line each answered request leaves, stamped when it is answered."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from immunity.domain import HostRef, utcnow
from immunity.signals.base import SignalSource
from immunity.signals.command import CommandSource
from immunity.testing.contracts import SignalHarness, SignalSourceContract
from immunity.testing.contracts.signals import Sent

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "adapters" / "examples"


def source(log: Path) -> CommandSource:
    settings = CommandSource.Settings(
        name="checkout",
        command=[sys.executable, str(EXAMPLE / "checkout_latency.py")],
        env={"CHECKOUT_LOG": str(log)},
        timeout=20,
    )
    return CommandSource(settings, base_dir=EXAMPLE)


class CommandHarness(SignalHarness):
    settle_s = 1.05  # windows are whole seconds: the edge after the traffic is a second on

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "access.jsonl"
        self.log.write_text("")
        self.source = source(self.log)
        self.canary = [HostRef(name="web1", address="127.0.0.1", port=8001)]
        self.baseline = [HostRef(name="web2", address="127.0.0.1", port=8002)]
        self.n = 0

    async def send(self, n: int) -> Sent:
        """Alternate hosts; every other canary request answers 500."""
        sent: Sent = Counter()
        with self.log.open("a") as out:
            for _ in range(n):
                self.n += 1
                host = (self.canary if self.n % 2 else self.baseline)[0]
                error = host in self.canary and self.n % 4 == 1
                ts = utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
                line = {"ts": ts, "host": host.name, "path": "/checkout", "latency_ms": 40.0}
                out.write(json.dumps({**line, "status": 500 if error else 200}) + "\n")
                sent[(host.name, error)] += 1
        return sent

    async def broken(self) -> SignalSource:
        return source(self.log.parent / "no-such.jsonl")


class TestCommandSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[SignalHarness]:
        h = CommandHarness(tmp_path)
        yield h
        await h.source.aclose()
