"""`ElasticsearchSource` held to the SignalSource contract against the Elasticsearch
stand-in (conftest.py: the documented REST wire format, searches evaluated on its
documents). Sending traffic is indexing one ECS access-log document per request, stamped
when it is answered, as a log shipper would."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_elasticsearch_source import INDEX, PROPERTIES

from immunity.domain import HostRef, utcnow
from immunity.signals.base import SignalSource
from immunity.signals.elasticsearch import ElasticsearchSource
from immunity.testing.contracts import SignalHarness, SignalSourceContract
from immunity.testing.contracts.signals import Sent


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source(url: str) -> ElasticsearchSource:
    settings = ElasticsearchSource.Settings(
        name="es",
        url=url,
        index="iis-logs-*",
        latency_unit="ns",
        filters={"application_name": "shop"},
        latency_bounds_ms=[50, 100, 250],
        request_timeout=5,
        delay=0,  # the stand-in searches what it holds at once (no refresh interval)
    )
    return ElasticsearchSource(settings, base_dir=Path("."))


class ElasticsearchHarness(SignalHarness):
    settle_s = 0.05

    def __init__(self, es: Any) -> None:
        self.es = es
        self.source = source(es.url)
        self.canary = [HostRef(name="web-1")]
        self.baseline = [HostRef(name="web-2"), HostRef(name="web-3")]
        self.sent = 0

    async def send(self, n: int) -> Sent:
        """Round robin over the three hosts; every third canary request answers 500."""
        sent: Sent = Counter()
        hosts = [*self.canary, *self.baseline]
        for _ in range(n):
            self.sent += 1
            host = hosts[self.sent % len(hosts)]
            error = host in self.canary and self.sent % 2 == 0
            status = 500 if error else 200
            self.es.indices[INDEX]["docs"].append(
                {
                    "@timestamp": utcnow().isoformat().replace("+00:00", "Z"),
                    "host": {"name": host.name},
                    "http": {"response": {"status_code": status}},
                    "event": {"duration": 40_000_000},
                    "application_name": "shop",
                    "site": "shop-v2",
                }
            )
            sent[(host.name, error)] += 1
        return sent

    async def broken(self) -> SignalSource:
        return source(f"http://127.0.0.1:{_closed_port()}")


class TestElasticsearchSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, fake_es: Any) -> AsyncIterator[SignalHarness]:
        fake_es.add_index(INDEX, PROPERTIES, [])
        h = ElasticsearchHarness(fake_es)
        yield h
        await h.source.aclose()
