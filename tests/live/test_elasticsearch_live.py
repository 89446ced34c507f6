"""ElasticsearchSource against a real cluster; runs only when IMMUNITY_ES_URL is set.

Environment: IMMUNITY_ES_URL (e.g. https://localhost:9200), optional IMMUNITY_ES_API_KEY
or IMMUNITY_ES_USERNAME/IMMUNITY_ES_PASSWORD, IMMUNITY_ES_CA_CERTS, IMMUNITY_ES_VERIFY=0.
Creates a temporary index `immunity-live-<random>`, indexes a few ECS documents,
observes, and deletes the index.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from immunity.domain import Cohort, HostRef
from immunity.signals.elasticsearch import ElasticsearchSource

pytestmark = [
    pytest.mark.live,
    pytest.mark.anyio,
    pytest.mark.skipif(not os.environ.get("IMMUNITY_ES_URL"), reason="IMMUNITY_ES_URL not set"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client_kwargs() -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if os.environ.get("IMMUNITY_ES_API_KEY"):
        kw["api_key"] = os.environ["IMMUNITY_ES_API_KEY"]
    if os.environ.get("IMMUNITY_ES_USERNAME"):
        kw["username"] = os.environ["IMMUNITY_ES_USERNAME"]
        kw["password"] = os.environ.get("IMMUNITY_ES_PASSWORD", "")
    if os.environ.get("IMMUNITY_ES_CA_CERTS"):
        kw["ca_certs"] = os.environ["IMMUNITY_ES_CA_CERTS"]
    if os.environ.get("IMMUNITY_ES_VERIFY") == "0":
        kw["verify_certs"] = False
    return kw


@pytest.fixture
async def live_index() -> AsyncIterator[str]:
    from elasticsearch import AsyncElasticsearch

    kw = _client_kwargs()
    auth: dict[str, Any] = {}
    if "api_key" in kw:
        auth["api_key"] = kw["api_key"]
    if "username" in kw:
        auth["basic_auth"] = (kw["username"], kw["password"])
    if "ca_certs" in kw:
        auth["ca_certs"] = kw["ca_certs"]
    if "verify_certs" in kw:
        auth["verify_certs"] = kw["verify_certs"]
    es = AsyncElasticsearch(os.environ["IMMUNITY_ES_URL"], **auth)
    name = f"immunity-live-{uuid.uuid4().hex[:8]}"
    await es.indices.create(
        index=name,
        mappings={
            "properties": {
                "@timestamp": {"type": "date"},
                "host": {"properties": {"name": {"type": "keyword"}}},
                "http": {
                    "properties": {"response": {"properties": {"status_code": {"type": "long"}}}}
                },
                "event": {"properties": {"duration": {"type": "long"}}},
                "application_name": {"type": "keyword"},
            }
        },
    )
    t = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    ops: list[dict[str, Any]] = []
    for host, status, ms in (
        [("web-1", 500, 40)] * 3 + [("web-1", 200, 300)] * 7 + [("web-2", 200, 20)] * 20
    ):
        ops.append({"index": {"_index": name}})
        ops.append(
            {
                "@timestamp": t.isoformat(),
                "host": {"name": host},
                "http": {"response": {"status_code": status}},
                "event": {"duration": ms * 1_000_000},
                "application_name": "shop",
            }
        )
    await es.bulk(operations=ops, refresh=True)
    try:
        yield name
    finally:
        await es.indices.delete(index=name)
        await es.close()


async def test_live_cluster_counts_each_cohort(live_index: str) -> None:
    """Against a real cluster, preflight passes and one look counts each cohort's documents."""
    settings = ElasticsearchSource.Settings(
        url=os.environ["IMMUNITY_ES_URL"],
        index=live_index,
        filters={"application_name": "shop"},
        latency_bounds_ms=[50, 100, 250],
        **_client_kwargs(),
    )
    src = ElasticsearchSource(settings, base_dir=Path("."))
    cohorts = {Cohort.CANARY: [HostRef(name="web-1")], Cohort.BASELINE: [HostRef(name="web-2")]}
    try:
        await src.preflight([h for hs in cohorts.values() for h in hs])
        now = dt.datetime.now(dt.UTC)
        obs = await src.observe(cohorts, now - dt.timedelta(minutes=5), now)
    finally:
        await src.aclose()
    assert (obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors) == (10, 3)
    assert tuple(obs[Cohort.CANARY].latency_buckets) == (3, 0, 0, 7)
    assert (obs[Cohort.BASELINE].requests, obs[Cohort.BASELINE].errors) == (20, 0)
