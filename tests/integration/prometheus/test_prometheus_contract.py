"""`PrometheusSource` (mode delta, the default) held to the SignalSource contract against
the session's real Prometheus, scraping the two apps every second. The fleet's background
load is paused while a case runs, so the apps answer only the case's own requests; the
clients' record of those answers is what each cohort must count."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from prom_fleet import Fleet, free_port

from immunity.signals.base import SignalSource
from immunity.signals.prometheus import PrometheusSource
from immunity.testing.contracts import SignalHarness, SignalSourceContract
from immunity.testing.contracts.signals import Sent

pytestmark = pytest.mark.timeout(120)
SCRAPE_S = 1.0  # prom_fleet's scrape_interval


class PrometheusHarness(SignalHarness):
    settle_s = SCRAPE_S + 0.5  # a request is in a sample by the next scrape

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.source = PrometheusSource(
            PrometheusSource.Settings(name="prom", url=fleet.url), base_dir=None
        )
        self.canary, self.baseline = [fleet.canary.host], [fleet.baseline.host]

    async def send(self, n: int) -> Sent:
        """Half the requests to each app, straight (the canary answers 30 % 500s)."""
        sent: Sent = Counter()
        async with httpx.AsyncClient(timeout=5) as client:
            for i in range(n):
                host = (self.canary if i % 2 else self.baseline)[0]
                r = await client.get(f"{host.base_url}/")
                sent[(host.name, r.status_code >= 500)] += 1
        return sent

    async def quiet(self) -> None:
        """Pause the fleet's load; its last request (under 0.1 s on its way) is scraped
        by the end of the wait."""
        self.fleet.paused.set()
        await anyio.sleep(0.1 + self.settle_s)

    async def broken(self) -> SignalSource:
        return PrometheusSource(
            PrometheusSource.Settings(name="prom", url=f"http://127.0.0.1:{free_port()}"),
            base_dir=None,
        )


class TestPrometheusSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, prometheus_with_data: Fleet) -> AsyncIterator[SignalHarness]:
        fleet = prometheus_with_data
        h = PrometheusHarness(fleet)
        try:
            yield h
        finally:
            await h.source.aclose()
            fleet.resume()
