"""Probe traffic on a real 3-host sandbox: who gets it (read from each app's own counters and
HAProxy's own per-server counters), and that it stops when customers come back."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator

import httpx
import pytest

from immunity.config import load
from immunity.domain import Cohort, HostRef, Observation
from immunity.engine.context import build_fleet
from immunity.sandbox import fleet
from immunity.sandbox.load import run_load
from immunity.signals.probe import ProbeSource, customer_traffic

pytestmark = pytest.mark.anyio

_COUNT = re.compile(r'^app_requests_total\{code="(\d+)",release="[^"]*"\} ([0-9.e+]+)$', re.M)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fleet.SandboxInfo]:
    d = tmp_path_factory.mktemp("sbx") / "fleet"
    info = fleet.create_sandbox(d, hosts=3)
    try:
        yield info
    finally:
        fleet.teardown(d)


def app_requests(info: fleet.SandboxInfo) -> dict[str, int]:
    """Each app's own count of app requests it answered (its /metrics), by host."""
    out = {}
    for name, port in info.host_ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        out[name] = int(sum(float(v) for _, v in _COUNT.findall(text)))
    return out


def balancer_requests(info: fleet.SandboxInfo) -> dict[str, int]:
    """HAProxy's own count of requests it sent each server (`show stat` stot)."""
    text = fleet.haproxy_command(info.dir, "show stat")
    header = text.splitlines()[0].lstrip("# ").split(",")
    out = {}
    for line in text.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") in info.host_ports:
            out[row["svname"]] = int(row["stot"] or 0)
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


async def test_probe_reaches_exactly_the_cohort_hosts_and_stops_when_customers_come_back(
    sandbox: fleet.SandboxInfo,
) -> None:
    """h1 canary, h2 baseline, h3 in neither: the apps' own counters show probe requests on
    h1 and h2 only (none through the balancer, none on h3). With customers bringing a canary
    host more than the probe's rate, the probe stops: every app request is then a customer's
    (the app's count equals HAProxy's per server)."""
    loaded = load(sandbox.config_path)
    f = build_fleet(loaded)
    probe = f.signals["probe"]
    assert isinstance(probe, ProbeSource)
    lb = f.signals["lb"]
    h1, h2, _h3 = f.hosts
    groups = {Cohort.CANARY: [h1], Cohort.BASELINE: [h2]}
    rate = probe.config.rate
    try:
        apps0, lb0 = app_requests(sandbox), balancer_requests(sandbox)
        start = dt.datetime.now(dt.UTC)
        async with probe.sending(lambda: groups):
            await asyncio.sleep(3.0)
        await asyncio.sleep(0.3)
        apps = delta(app_requests(sandbox), apps0)
        assert delta(balancer_requests(sandbox), lb0) == {"h1": 0, "h2": 0, "h3": 0}
        assert apps["h3"] == 0
        assert 2 * rate <= apps["h1"] <= 4 * rate and 2 * rate <= apps["h2"] <= 4 * rate
        # What the probe reports is what the apps counted, cohort by cohort (less the few
        # requests in flight when the bake ended: they are cancelled, not counted).
        seen = await probe.observe(groups, start, dt.datetime.now(dt.UTC))
        for host, cohort in (("h1", Cohort.CANARY), ("h2", Cohort.BASELINE)):
            assert seen[cohort].requests <= apps[host] <= probe.sent[host]
            assert apps[host] - seen[cohort].requests <= 0.1 * apps[host]
        assert "h3" not in probe.sent
        assert seen[Cohort.CANARY].errors == 0

        # Customers come back: 3 x rate + more per host through the balancer.
        stop = asyncio.Event()
        customers = asyncio.create_task(
            run_load(sandbox.url, rps=3 * (rate + 10), duration=30, out_path=None, stop_event=stop)
        )
        await asyncio.sleep(2.0)
        async with probe.sending(lambda: groups):
            window = dt.datetime.now(dt.UTC)
            for _ in range(4):  # the bake's looks: observe customers, steer the probe
                await asyncio.sleep(1.0)
                now = dt.datetime.now(dt.UTC)
                obs = await lb.observe(groups, window - dt.timedelta(seconds=1.5), now)
                window = now
                per: dict[Cohort | str, Observation] = {k: v for k, v in obs.items()}
                probe.steer(1.0, customer_traffic({"lb": per}, 1))
            assert not probe.active, probe.reason
            apps0, lb0 = app_requests(sandbox), balancer_requests(sandbox)
            await asyncio.sleep(2.0)
            apps, lbs = delta(app_requests(sandbox), apps0), delta(balancer_requests(sandbox), lb0)
        stop.set()
        await customers
        assert min(lbs.values()) > 0
        # No probe request while customers suffice: what each app answered came through HAProxy
        # (allowing for requests in flight at either read).
        for name in ("h1", "h2", "h3"):
            assert abs(apps[name] - lbs[name]) <= 3, (name, apps, lbs)
    finally:
        await f.aclose()


async def test_a_host_leaving_the_cohort_gets_no_more_probe_requests(
    sandbox: fleet.SandboxInfo,
) -> None:
    """The probe re-reads the cohorts as it sends: h2 dropped from the baseline stops getting
    requests (its own counter stays put) while h1 keeps getting them."""
    f = build_fleet(load(sandbox.config_path))
    probe = f.signals["probe"]
    assert isinstance(probe, ProbeSource)
    h1, h2, _ = f.hosts
    groups: dict[Cohort, list[HostRef]] = {Cohort.CANARY: [h1], Cohort.BASELINE: [h2]}
    try:
        async with probe.sending(lambda: groups):
            await asyncio.sleep(1.0)
            groups[Cohort.BASELINE] = []
            await asyncio.sleep(0.5)  # requests already sent to h2 finish
            before = app_requests(sandbox)
            await asyncio.sleep(2.0)
            after = delta(app_requests(sandbox), before)
        assert after["h2"] == 0 and after["h3"] == 0
        assert after["h1"] >= probe.config.rate
    finally:
        await f.aclose()
