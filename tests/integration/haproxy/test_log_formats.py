"""The haproxy signal reads the log formats people have, as a real HAProxy writes them.

Each case starts a real HAProxy with one `log-format` (or `option httplog`) and one stdout
syslog format, sends real traffic through it to the sandbox's hosts (h2 answering 30 % 500s),
and compares what the signal counts per cohort with the load generator's own record.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hx_fleet import Fleet
from log_haproxy import command, logging_haproxy

from immunity.domain import Cohort, utcnow
from immunity.errors import PreflightError
from immunity.hosts.local import LocalDriver
from immunity.sandbox import fleet
from immunity.sandbox.load import read_records, run_load
from immunity.signals.haproxy import HAProxySource

pytestmark = pytest.mark.anyio

NAMED_EPOCH = 'log-format \'{"time":%Ts.%ms,"server":"%s","status":%ST,"latency":%Ta,"total":%Tt}\''
NAMED_TR = 'log-format \'{"when":"%tr","where":"%b/%s","code":"%ST","Ta":%Ta}\''
NAMED_T = 'log-format \'{"accepted":"%t","srv":"%s","code":%ST,"Ta":%Ta,"Tt":%Tt}\''

CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, str]]] = {
    # name: (log line, stdout syslog format, signal settings, haproxy environment)
    "httplog raw": ("option httplog", "raw", {}, {}),
    "httplog rfc3164": ("option httplog", "rfc3164", {"log_format": "httplog"}, {}),
    "httplog rfc5424, HAProxy in another zone": (
        "option httplog",
        "rfc5424",
        {"timezone": "Asia/Kolkata"},
        {"TZ": "Asia/Kolkata"},
    ),
    "sandbox json": (f"log-format '{fleet.LOG_FORMAT}'", "raw", {"log_format": "json"}, {}),
    "named json, epoch seconds, rfc3164": (
        NAMED_EPOCH,
        "rfc3164",
        {
            "fields": {
                "server": "server",
                "status": "status",
                "timestamp": "time",
                "latency": "latency",
                "duration": "total",
                "backend": None,
            }
        },
        {},
    ),
    "named json, %tr date, backend/server": (
        NAMED_TR,
        "raw",
        {
            "log_format": "json",
            "fields": {
                "server": "where",
                "status": "code",
                "timestamp": "when",
                "latency": "Ta",
                "duration": None,
            },
            "backend": "be_app",
            "timezone": "UTC",
        },
        {"TZ": "UTC"},
    ),
    "named json, %t date, +05:30": (
        NAMED_T,
        "raw",
        {"fields": {"status": "code", "timestamp": "accepted"}, "timezone": "+05:30"},
        {"TZ": "Asia/Kolkata"},
    ),
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder: HAProxy's stats socket path must fit in 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="hxl"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def canary_on_h2(hx: Fleet) -> AsyncIterator[Fleet]:
    """h2 runs a release answering 30 % 500s; back on v1 afterwards."""
    fleet.add_release(hx.dir, "bad30", error_rate=0.3)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=hx.dir)
    h2 = hx.hosts[1]
    await driver.install(h2, "bad30")
    await driver.start(h2, "bad30")
    try:
        yield hx
    finally:
        await driver.start(h2, "v1")


@pytest.mark.parametrize("case", list(CASES))
async def test_each_log_format_counts_what_customers_saw(
    case: str, canary_on_h2: Fleet, short_dir: Path
) -> None:
    """Per cohort, requests and 5xx read from HAProxy's own log equal the load generator's."""
    hx = canary_on_h2
    log_line, syslog, settings, env = CASES[case]
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(short_dir, servers, log_line=log_line, syslog=syslog, env=env) as lb:
        # a little traffic first: preflight must see the baseline's current traffic
        await run_load(lb.url + "/", 50, 0.4, None)
        await anyio.sleep(0.3)
        src = HAProxySource(
            HAProxySource.Settings(name="lb", access_log=str(lb.log), **settings),
            base_dir=short_dir,
        )
        seen_now = await src.preflight(hx.hosts)
        assert "request(s) in the last 60 s on h1, h2" in seen_now
        start = utcnow()
        await anyio.sleep(0.15)  # windows are counted in 0.1 s bins: start past one
        out = short_dir / "load.jsonl"
        summary = await run_load(lb.url + "/", 200, 1.5, out)
        await anyio.sleep(0.4)  # the last lines are written as the answers leave
        end = utcnow()
        obs = await src.observe(
            {Cohort.CANARY: [hx.hosts[1]], Cohort.BASELINE: [hx.hosts[0]]}, start, end
        )
        raw_lines = lb.log.read_text().splitlines()
    seen: Counter[tuple[str | None, bool]] = Counter(
        (r["host"], r["status"] >= 500) for r in read_records(out)
    )
    assert summary.requests == 300
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (seen[("h2", False)] + seen[("h2", True)], seen[("h2", True)]) == (
        canary.requests,
        canary.errors,
    ), raw_lines[-1]
    assert (seen[("h1", False)], 0) == (baseline.requests, baseline.errors)
    assert seen[("h2", True)] > 15
    assert sum(canary.latency_buckets) == canary.requests


async def test_a_log_in_another_format_is_refused_at_preflight_naming_the_line(
    hx: Fleet, short_dir: Path
) -> None:
    """httplog lines read as JSON: exit 2 naming the file, the line and the fields expected."""
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(short_dir, servers, log_line="option httplog") as lb:
        await run_load(lb.url + "/", 50, 0.4, None)
        await anyio.sleep(0.3)
        first_request_line = next(
            i for i, line in enumerate(lb.log.read_text().splitlines(), 1) if "fe_web" in line
        )
        src = HAProxySource(
            HAProxySource.Settings(access_log=str(lb.log), log_format="json"), base_dir=short_dir
        )
        with pytest.raises(PreflightError) as err:
            await src.preflight(hx.hosts)
    assert f"{lb.log}:{first_request_line}:" in err.value.message
    assert " fe_web " in err.value.message  # the line itself
    assert err.value.hint is not None
    assert "'srv'" in err.value.hint and "'st'" in err.value.hint and "'ts'" in err.value.hint
    assert err.value.exit_code == 2


async def test_a_log_naming_other_servers_is_refused_at_preflight(
    hx: Fleet, short_dir: Path
) -> None:
    """Lines parse but no configured host answers them (lb_id typo): exit 2 naming the servers."""
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(short_dir, servers, log_line="option httplog") as lb:
        await run_load(lb.url + "/", 50, 0.4, None)
        await anyio.sleep(0.3)
        src = HAProxySource(HAProxySource.Settings(access_log=str(lb.log)), base_dir=short_dir)
        wrong = [h.__class__(f"web-{h.name}", h.address, h.port) for h in hx.hosts]
        with pytest.raises(PreflightError) as err:
            await src.preflight(wrong)
    assert "server(s) h1, h2" in err.value.message
    assert "web-h1" in err.value.message


async def test_a_log_without_current_traffic_says_so_plainly(hx: Fleet, short_dir: Path) -> None:
    """A readable log with no request yet passes preflight, saying there is no traffic."""
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(short_dir, servers, log_line="option httplog") as lb:
        src = HAProxySource(HAProxySource.Settings(access_log=str(lb.log)), base_dir=short_dir)
        said = await src.preflight(hx.hosts)
    assert "no current traffic" in said


async def test_counter_mode_counts_the_same_errors_as_the_log(
    canary_on_h2: Fleet, short_dir: Path, record_property: Callable[[str, object], None]
) -> None:
    """On one HAProxy's traffic (app 500s, HAProxy's own 504 and 502), show-stat counters and
    the access log give each cohort the same requests and errors."""
    hx = canary_on_h2
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(short_dir, servers, log_line="option httplog", timeout_server="1s") as lb:
        await run_load(lb.url + "/", 50, 0.4, None)
        await anyio.sleep(0.3)
        from_log = HAProxySource(
            HAProxySource.Settings(name="log", access_log=str(lb.log)), base_dir=short_dir
        )
        from_counters = HAProxySource(
            HAProxySource.Settings(name="counters", socket=str(lb.socket)), base_dir=short_dir
        )
        await from_log.preflight(hx.hosts)
        await from_counters.preflight(hx.hosts)  # the first snapshot
        start = utcnow()
        await anyio.sleep(0.15)

        async def cut_h2_sessions() -> None:
            await anyio.sleep(0.6)  # while /slow?ms=800 requests are in flight
            await anyio.to_thread.run_sync(command, lb.socket, "shutdown sessions server be_app/h2")

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_load, lb.url + "/", 150, 1.5, short_dir / "ok.jsonl")
            tg.start_soon(run_load, lb.url + "/slow?ms=1500", 6, 1.0, short_dir / "504.jsonl")
            tg.start_soon(run_load, lb.url + "/slow?ms=800", 10, 0.5, short_dir / "502.jsonl")
            tg.start_soon(cut_h2_sessions)
        await anyio.sleep(0.4)
        end = utcnow()
        cohorts = {Cohort.CANARY: [hx.hosts[1]], Cohort.BASELINE: [hx.hosts[0]]}
        logged = await from_log.observe(cohorts, start, end)
        counted = await from_counters.observe(cohorts, start, end)
    figures = {str(c): (logged[c].requests, logged[c].errors) for c in cohorts}
    record_property("haproxy log vs counters, (requests, errors) per cohort", figures)
    statuses = Counter(
        r["status"] for name in ("504", "502") for r in read_records(short_dir / f"{name}.jsonl")
    )
    assert statuses[504] > 0 and statuses[502] > 0, statuses
    for cohort in cohorts:
        assert (logged[cohort].requests, logged[cohort].errors) == (
            counted[cohort].requests,
            counted[cohort].errors,
        ), cohort


async def test_a_request_logged_twice_counts_once(canary_on_h2: Fleet, short_dir: Path) -> None:
    """HAProxy logging each request through two `log` targets into one file: the copies are
    dropped and each cohort's counts equal the load generator's."""
    hx = canary_on_h2
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(
        short_dir, servers, log_line="option httplog", syslog="rfc3164", twice=True
    ) as lb:
        src = HAProxySource(HAProxySource.Settings(access_log=str(lb.log)), base_dir=short_dir)
        await src.preflight(hx.hosts)
        start = utcnow()
        await anyio.sleep(0.15)
        out = short_dir / "load.jsonl"
        await run_load(lb.url + "/", 150, 1.0, out)
        await anyio.sleep(0.4)
        obs = await src.observe(
            {Cohort.CANARY: [hx.hosts[1]], Cohort.BASELINE: [hx.hosts[0]]}, start, utcnow()
        )
        logged = sum(1 for line in lb.log.read_text().splitlines() if " fe_web be_app/" in line)
    seen = Counter(r["host"] for r in read_records(out))
    assert logged >= 2 * 150  # HAProxy really wrote each request twice
    assert (seen["h2"], seen["h1"]) == (obs[Cohort.CANARY].requests, obs[Cohort.BASELINE].requests)
    assert "duplicate lines dropped" in obs[Cohort.CANARY].detail


async def test_dates_read_in_the_wrong_zone_are_refused_at_preflight(
    hx: Fleet, short_dir: Path
) -> None:
    """HAProxy writes %tr in Asia/Kolkata time, the signal reads it as UTC: the newest
    request seems 5.5 h off a file written just now: exit 2 pointing at `timezone`."""
    servers = {h.name: h.port for h in hx.hosts}
    with logging_haproxy(
        short_dir, servers, log_line="option httplog", env={"TZ": "Asia/Kolkata"}
    ) as lb:
        await run_load(lb.url + "/", 50, 0.4, None)
        await anyio.sleep(0.3)
        src = HAProxySource(
            HAProxySource.Settings(access_log=str(lb.log), timezone="UTC"), base_dir=short_dir
        )
        with pytest.raises(PreflightError) as err:
            await src.preflight(hx.hosts)
    assert "(+5.50 h)" in err.value.message
    assert err.value.hint is not None and "timezone" in err.value.hint
