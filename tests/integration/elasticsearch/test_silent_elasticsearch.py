"""Preflight's cross-check of a silent signal with the balancer's own counters, for an
Elasticsearch signal: customers go through a real HAProxy sandbox, and a shipper indexes
one ECS document per answered request into the Elasticsearch stand-in (the documented
wire format), naming the host by its FQDN as a Beats shipper on the machine would."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_elasticsearch_source import PROPERTIES

from immunity.analysis.preflight import cross_check_traffic
from immunity.domain import HostRef
from immunity.errors import PreflightError
from immunity.sandbox import fleet
from immunity.signals.elasticsearch import ElasticsearchSource
from servers.customers import customers, pool, sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
INDEX = "access-2026.11.30"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[fleet.SandboxInfo, list[HostRef]]]:
    with sandbox(tmp_path_factory.mktemp("silent-es") / "fleet") as s:
        yield s


def shipper(es: Any) -> Any:
    """Index each answered request as a document: @timestamp when it was answered,
    host.name the answering host's FQDN (`h1.shop.internal`)."""

    def ship(records: list[dict[str, Any]]) -> None:
        for r in records:
            if not r["host"]:
                continue
            at = dt.datetime.fromtimestamp(r["at"] + r["latency_ms"] / 1000, dt.UTC)
            es.indices[INDEX]["docs"].append(
                {
                    "@timestamp": at.isoformat().replace("+00:00", "Z"),
                    "host": {"name": f"{r['host']}.shop.internal"},
                    "http": {"response": {"status_code": r["status"]}},
                    "event": {"duration": int(r["latency_ms"] * 1_000_000)},
                }
            )

    return ship


def source(es: Any, hosts: list[HostRef], **kw: Any) -> ElasticsearchSource:
    settings = ElasticsearchSource.Settings(
        name="es", url=es.url, index="access-*", delay=1, request_timeout=5, **kw
    )
    return ElasticsearchSource(settings, base_dir=Path("."))


async def test_an_elasticsearch_signal_that_sees_none_of_the_traffic_is_refused(
    stack: tuple[fleet.SandboxInfo, list[HostRef]], fake_es: Any
) -> None:
    """The documents name hosts by FQDN and the signal has no `host_names`, so it counts
    none of the hosts' requests while HAProxy serves them: preflight refuses, naming the
    signal and HAProxy's counts. With `host_names` mapping each host to its FQDN the same
    documents are counted and preflight passes."""
    info, hosts = stack
    fake_es.add_index(INDEX, PROPERTIES, [])
    wrong = source(fake_es, hosts)
    right = source(fake_es, hosts, host_names={h.name: f"{h.name}.shop.internal" for h in hosts})
    lb = pool(info)
    async with customers(info, shippers=(shipper(fake_es),)):
        await anyio.sleep(3)
        try:
            await wrong.preflight(hosts)
            assert wrong.recent_traffic is not None and wrong.recent_traffic.silent
            assert fake_es.indices[INDEX]["docs"], "the shipper indexed nothing"
            with anyio.fail_after(30), pytest.raises(PreflightError) as info_:
                await cross_check_traffic(lb, {"es": wrong}, hosts)
            msg = info_.value.message
            assert "signal 'es' saw no request" in msg and "last session h" in msg, msg
            await right.preflight(hosts)
            assert right.recent_traffic is not None and not right.recent_traffic.silent
            await cross_check_traffic(lb, {"es": right}, hosts)
        finally:
            await wrong.aclose()
            await right.aclose()
