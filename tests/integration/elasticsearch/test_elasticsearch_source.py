"""ElasticsearchSource against the documented REST wire format (the stand-in in conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from immunity.domain import Cohort, HostRef, ObservationStatus
from immunity.errors import PreflightError, SignalError
from immunity.signals.base import SignalSource
from immunity.signals.elasticsearch import ElasticsearchSource

pytestmark = pytest.mark.anyio

T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=1)
INDEX = "iis-logs-2026.11.26"
CANARY = [HostRef(name="web-1")]
BASELINE = [HostRef(name="web-2"), HostRef(name="web-3")]
COHORTS = {Cohort.CANARY: CANARY, Cohort.BASELINE: BASELINE}
SECRET = "c2VjcmV0LU1BUktFUi1kby1ub3QtbG9n"

PROPERTIES: dict[str, Any] = {
    "@timestamp": {"type": "date"},
    "host": {"properties": {"name": {"type": "keyword"}}},
    "http": {"properties": {"response": {"properties": {"status_code": {"type": "long"}}}}},
    "event": {"properties": {"duration": {"type": "long"}}},
    "application_name": {"type": "keyword"},
    "site": {"type": "keyword"},
}


def doc(
    host: str, status: int, ms: float, *, at: dt.datetime = T0, app: str = "shop"
) -> dict[str, Any]:
    """One ECS-shaped access-log document."""
    return {
        "@timestamp": (at + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "host": {"name": host},
        "http": {"response": {"status_code": status}},
        "event": {"duration": int(ms * 1_000_000)},
        "application_name": app,
        "site": "shop-v2",
    }


def fleet_docs() -> list[dict[str, Any]]:
    docs = []
    # canary: 100 requests, 10 errors; 50 at 40 ms, 30 at exactly 100 ms, 20 at 300 ms
    docs += [doc("web-1", 500 if i < 10 else 200, 40) for i in range(50)]
    docs += [doc("web-1", 200, 100) for _ in range(30)]
    docs += [doc("web-1", 200, 300) for _ in range(20)]
    # baseline: 2 x 150 requests, 3 errors (one 503, two 502), all at 20 ms
    docs += [doc(h, 503 if i == 0 else 200, 20) for h in ("web-2", "web-3") for i in range(150)]
    docs += [doc("web-3", 502, 20) for _ in range(2)]
    # noise that must not count: other app, other hosts, outside the window, 4xx
    docs += [doc("web-1", 500, 900, app="admin") for _ in range(40)]
    docs += [doc("web-9", 500, 900) for _ in range(40)]
    docs += [doc("web-1", 500, 900, at=T0 - dt.timedelta(minutes=5)) for _ in range(40)]
    docs += [doc("web-1", 500, 900, at=T1) for _ in range(40)]
    docs += [doc("web-2", 404, 20) for _ in range(5)]
    return docs


def _source(url: str, **kw: Any) -> ElasticsearchSource:
    fields: dict[str, Any] = {
        "url": url,
        "index": "iis-logs-*",
        "latency_unit": "ns",
        "filters": {"application_name": "shop"},
        "latency_bounds_ms": [50, 100, 250],
        "request_timeout": 5,
    }
    settings = ElasticsearchSource.Settings(**{**fields, **kw})
    return ElasticsearchSource(settings, base_dir=Path("."))


@pytest.fixture
def es(fake_es: Any) -> Any:
    fake_es.add_index(INDEX, PROPERTIES, fleet_docs())
    return fake_es


async def test_elasticsearch_source_is_a_signal_source(es: Any) -> None:
    """The adapter satisfies the SignalSource protocol."""
    src = _source(es.url, name="iis")
    assert isinstance(src, SignalSource)
    assert src.name == "iis"
    await src.aclose()


async def test_observe_counts_requests_errors_and_latency_per_cohort(es: Any) -> None:
    """Each cohort's requests, 5xx and latency histogram come from its hosts' documents only."""
    src = _source(es.url)
    obs = await src.observe(COHORTS, T0, T1)
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (canary.requests, canary.errors, canary.hosts) == (100, 10, 1)
    assert tuple(canary.latency_bounds_ms) == (50.0, 100.0, 250.0)
    assert tuple(canary.latency_buckets) == (50, 30, 0, 20)
    assert (baseline.requests, baseline.errors, baseline.hosts) == (307, 4, 2)
    assert tuple(baseline.latency_buckets) == (307, 0, 0, 0)
    assert "2 of 2 host(s)" in baseline.detail
    await src.aclose()


async def test_observe_sends_one_search_of_structured_filters_only(es: Any) -> None:
    """One look is one size-0 search whose query is a bool.filter of range/terms/term, no query_string."""
    src = _source(es.url, filters={"application_name": "shop", "site": ["shop-v1", "shop-v2"]})
    await src.observe(COHORTS, T0, T1)
    (body,) = es.searches()
    assert "query_string" not in json.dumps(body)
    assert body["size"] == 0
    clauses = body["query"]["bool"]["filter"]
    assert clauses == [
        {
            "range": {
                "@timestamp": {
                    "gte": "2026-11-26T10:00:00.000Z",
                    "lt": "2026-11-26T10:01:00.000Z",
                    "format": "strict_date_optional_time",
                }
            }
        },
        {"terms": {"host.name": ["web-1", "web-2", "web-3"]}},
        {"term": {"application_name": "shop"}},
        {"terms": {"site": ["shop-v1", "shop-v2"]}},
    ]
    assert set(body["aggs"]["cohorts"]["filters"]["filters"]) == {"canary", "baseline"}
    await src.aclose()


async def test_host_values_with_quotes_and_operators_match_exactly(es: Any) -> None:
    """A host value full of query syntax is matched as one exact value, not parsed."""
    tricky = 'WEB-01" OR host.name:* AND (x'
    es.indices[INDEX]["docs"] += [doc(tricky, 500, 10) for _ in range(7)]
    es.indices[INDEX]["docs"] += [doc("WEB-01", 500, 10) for _ in range(3)]
    src = _source(es.url, host_names={"web-1": tricky})
    obs = await src.observe({Cohort.CANARY: CANARY}, T0, T1)
    assert (obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors) == (7, 7)
    await src.aclose()


async def test_an_empty_cohort_is_missing_and_costs_no_query_clause(es: Any) -> None:
    """A cohort without hosts is reported missing; the other cohort is still measured."""
    src = _source(es.url)
    obs = await src.observe({Cohort.CANARY: CANARY, Cohort.BASELINE: []}, T0, T1)
    assert obs[Cohort.CANARY].requests == 100
    assert not obs[Cohort.BASELINE].available
    (body,) = es.searches()
    assert set(body["aggs"]["cohorts"]["filters"]["filters"]) == {"canary"}
    await src.aclose()


async def test_latency_in_milliseconds_uses_millisecond_bounds(fake_es: Any) -> None:
    """With latency_unit ms (IIS time-taken) the histogram bounds are sent in ms."""
    props = {**PROPERTIES, "time_taken": {"type": "long"}}
    docs = [{**doc("web-1", 200, 0), "time_taken": ms} for ms in (10, 50, 51, 100, 5000)]
    fake_es.add_index(INDEX, props, docs)
    src = _source(fake_es.url, latency_field="time_taken", latency_unit="ms")
    obs = await src.observe({Cohort.CANARY: CANARY}, T0, T1)
    assert tuple(obs[Cohort.CANARY].latency_buckets) == (2, 2, 0, 1)
    await src.aclose()


async def test_preflight_accepts_a_matching_index_with_usable_fields(es: Any) -> None:
    """Preflight passes on a reachable cluster, a matching pattern and well-typed fields."""
    src = _source(es.url)
    said = await src.preflight(CANARY + BASELINE)
    await src.aclose()
    # the documents are from 2026-11-26 10:00: nothing in the last minute
    assert "there is no current traffic to judge" in said


async def test_preflight_counts_the_hosts_requests_of_the_last_minute(fake_es: Any) -> None:
    """Documents of the last minute (before the delay) are counted at preflight."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=20)
    fake_es.add_index(INDEX, PROPERTIES, [doc("web-1", 200, 20, at=at) for _ in range(7)])
    src = _source(fake_es.url)
    said = await src.preflight(CANARY + BASELINE)
    await src.aclose()
    assert "holds 7 request(s) (0 5xx) of the 3 host(s)" in said


async def test_preflight_names_an_index_pattern_that_matches_nothing(es: Any) -> None:
    """An index pattern with no index fails preflight naming the pattern."""
    src = _source(es.url, index="iis-logz-*")
    with pytest.raises(PreflightError) as err:
        await src.preflight(CANARY)
    assert "index iis-logz-* does not exist" in err.value.message
    assert err.value.hint is not None and "index" in err.value.hint
    await src.aclose()


async def test_preflight_rejects_a_text_host_field_and_suggests_keyword(fake_es: Any) -> None:
    """A host field mapped as text (analysed) fails preflight pointing at its .keyword."""
    props = {
        **PROPERTIES,
        "host": {
            "properties": {"name": {"type": "text", "fields": {"keyword": {"type": "keyword"}}}}
        },
    }
    fake_es.add_index(INDEX, props, [])
    src = _source(fake_es.url)
    with pytest.raises(PreflightError) as err:
        await src.preflight(CANARY)
    assert "host_field: field 'host.name' is mapped as text" in err.value.message
    assert "use host.name.keyword" in err.value.message
    await src.aclose()


async def test_preflight_names_every_field_it_cannot_use(es: Any) -> None:
    """A keyword status field and a misspelt filter field are both named in one error."""
    src = _source(es.url, status_field="site", filters={"app_name": "shop"})
    with pytest.raises(PreflightError) as err:
        await src.preflight(CANARY)
    assert "status_field: field 'site' is mapped as keyword" in err.value.message
    assert "filters.app_name: field 'app_name' is in no index matching iis-logs-*" in (
        err.value.message
    )
    await src.aclose()


async def test_wrong_api_key_is_an_authentication_error_that_hides_the_key(
    es: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused api_key fails preflight (401) and observe, and the key appears nowhere."""
    caplog.set_level(logging.DEBUG)
    es.api_key = "the-right-key"
    src = _source(es.url, api_key=SECRET)
    with pytest.raises(PreflightError) as pre:
        await src.preflight(CANARY)
    with pytest.raises(SignalError) as obs:
        await src.observe(COHORTS, T0, T1)
    await src.aclose()
    assert "authentication failed (401)" in pre.value.message
    assert pre.value.hint is not None and "api_key" in pre.value.hint
    assert es.requests[0][0:2] == ("GET", "/")
    texts = [str(e.value) + repr(e.value.to_dict()) for e in (pre, obs)]
    assert all(SECRET not in t for t in texts)
    assert SECRET not in caplog.text
    assert SECRET not in repr(src._s)


async def test_right_api_key_is_sent_as_an_apikey_header(es: Any) -> None:
    """With the right api_key the cluster answers and the look succeeds."""
    es.api_key = SECRET
    src = _source(es.url, api_key=SECRET)
    await src.preflight(CANARY)
    obs = await src.observe(COHORTS, T0, T1)
    assert obs[Cohort.CANARY].requests == 100
    await src.aclose()


async def test_unreachable_cluster_fails_preflight_and_observe_without_the_password() -> None:
    """A closed port is a PreflightError at preflight and a SignalError when observing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = _source(f"http://127.0.0.1:{port}", username="immunity", password=SECRET)
    with pytest.raises(PreflightError) as pre:
        await src.preflight(CANARY)
    with pytest.raises(SignalError) as obs:
        await src.observe(COHORTS, T0, T1)
    await src.aclose()
    assert "cannot connect" in pre.value.message
    assert f"127.0.0.1:{port}" in obs.value.message
    assert all(SECRET not in str(e.value) for e in (pre, obs))


async def test_a_missing_concrete_index_when_observing_is_a_signal_error(es: Any) -> None:
    """Searching a concrete index that is gone maps the 404 to SignalError naming the index."""
    src = _source(es.url, index="iis-logs-2020.01.01")
    with pytest.raises(SignalError) as err:
        await src.observe(COHORTS, T0, T1)
    assert "index iis-logs-2020.01.01 does not exist" in err.value.message
    await src.aclose()


async def test_failed_shards_make_a_partial_answer_never_evidence(es: Any) -> None:
    """One index's shard fails (`_shards.failed`): the counts lack its documents, so the look
    is rejected naming the shard failure, not judged on what the others returned."""
    es.add_index("iis-logs-2026.11.27", PROPERTIES, fleet_docs())
    es.failing["iis-logs-2026.11.27"] = "CircuitBreakingException: [parent] Data too large"
    src = _source(es.url)
    obs = await src.observe(COHORTS, T0, T1)
    await src.aclose()
    for o in obs.values():
        assert o.status is ObservationStatus.REJECTED
        assert "1 of 2 shard(s)" in o.detail and "Data too large" in o.detail


async def test_a_timed_out_search_is_a_partial_answer(es: Any) -> None:
    """`timed_out: true` returns what was collected so far: rejected, not half the traffic."""
    es.time_out = True
    src = _source(es.url)
    obs = await src.observe(COHORTS, T0, T1)
    await src.aclose()
    assert all(
        o.status is ObservationStatus.REJECTED and "timed out" in o.detail for o in obs.values()
    )
