"""HAProxyPool contract against a real HAProxy; assertions read HAProxy's own view."""

from __future__ import annotations

import socket
import time

import aiohttp
import anyio
import pytest
from hx_fleet import Fleet

from immunity.domain import HostRef, LbState
from immunity.errors import BalancerError, PreflightError
from immunity.hosts.local import LocalDriver
from immunity.lb.haproxy import HAProxyPool

pytestmark = pytest.mark.anyio

DRAIN, MAINT = 0x08, 0x01


def pool(hx: Fleet, socket: str = "haproxy/admin.sock", retry_for: float = 10.0) -> HAProxyPool:
    settings = HAProxyPool.Settings(socket=socket, poll_interval=0.05, retry_for=retry_for)
    return HAProxyPool(settings, base_dir=hx.dir)


async def test_drain_sets_the_server_to_drain(hx: Fleet) -> None:
    """drain() leaves the server in HAProxy's drain admin state."""
    await pool(hx).drain(hx.hosts[0])
    assert hx.server_state("h1").admin_state & DRAIN
    assert hx.status("h1") == "DRAIN"


async def test_drain_twice_is_a_no_op(hx: Fleet) -> None:
    """A second drain() succeeds and leaves the server draining."""
    lb = pool(hx)
    await lb.drain(hx.hosts[0])
    await lb.drain(hx.hosts[0])
    assert hx.server_state("h1").admin_state & DRAIN


async def test_in_flight_request_finishes_before_wait_drained_returns(hx: Fleet) -> None:
    """A slow request on the drained server answers 200, and wait_drained returns only after it."""
    lb = pool(hx)
    done: dict[str, float] = {}
    hosts_seen: list[str] = []

    async def slow(session: aiohttp.ClientSession) -> None:
        async with session.get(hx.info.url + "/slow?ms=1500") as resp:
            assert resp.status == 200
            host = resp.headers["X-Immunity-Host"]
            hosts_seen.append(host)
            done[host] = time.monotonic()

    async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
        for _ in range(2):  # round robin: one lands on each server
            tg.start_soon(slow, session)
        with anyio.fail_after(5):
            while hx.scur("h1") < 1:  # noqa: ASYNC110 - polling HAProxy, no event to wait on
                await anyio.sleep(0.02)
        await lb.drain(hx.hosts[0])
        with anyio.fail_after(10):
            await lb.wait_drained(hx.hosts[0])
        drained_at = time.monotonic()
        assert hx.scur("h1") == 0
        assert hx.server_state("h1").admin_state & MAINT
    assert sorted(hosts_seen) == ["h1", "h2"]
    assert done["h1"] <= drained_at


async def test_enable_brings_the_server_back_and_wait_healthy_returns_when_up(hx: Fleet) -> None:
    """After a drain, enable + wait_healthy end with HAProxy calling the server UP and ready."""
    lb = pool(hx)
    await lb.drain(hx.hosts[0])
    with anyio.fail_after(5):
        await lb.wait_drained(hx.hosts[0])
    assert hx.status("h1") == "MAINT"
    await lb.enable(hx.hosts[0])
    with anyio.fail_after(5):
        await lb.wait_healthy(hx.hosts[0])
    assert hx.status("h1") == "UP"
    assert hx.server_state("h1").admin_state == 0
    members = await lb.members(hx.hosts)
    assert members["h1"].state is LbState.SERVING


async def test_wait_healthy_does_not_trust_up_before_a_check_of_a_dead_app(hx: Fleet) -> None:
    """An app that died while out of the pool never satisfies wait_healthy after enable."""
    lb = pool(hx)
    driver = LocalDriver(LocalDriver.Settings(root="hosts", releases="releases"), base_dir=hx.dir)
    host = hx.hosts[0]
    await lb.drain(host)
    with anyio.fail_after(5):
        await lb.wait_drained(host)
    await driver.stop(host)
    try:
        await lb.enable(host)
        with anyio.move_on_after(2) as scope:
            await lb.wait_healthy(host)
        assert scope.cancelled_caught
        assert hx.status("h1").startswith("DOWN")
        assert (await lb.members(hx.hosts))["h1"].state is LbState.UNHEALTHY
    finally:
        await driver.start(host, "v1")


async def test_members_maps_haproxy_states(hx: Fleet) -> None:
    """members() reports draining, out and serving as HAProxy shows them."""
    lb = pool(hx)
    hx.raw("set server be_app/h1 state drain")
    hx.raw("set server be_app/h2 state maint")
    members = await lb.members(hx.hosts)
    assert (members["h1"].state, members["h2"].state) == (LbState.DRAINING, LbState.OUT)


async def test_unknown_server_is_an_error(hx: Fleet) -> None:
    """A host that is not a server of the backend fails drain and preflight, naming it."""
    lb = pool(hx)
    ghost = HostRef("ghost", "127.0.0.1", 1)
    with pytest.raises(BalancerError, match="ghost"):
        await lb.drain(ghost)
    with pytest.raises(PreflightError, match="ghost"):
        await lb.preflight([*hx.hosts, ghost])
    await lb.preflight(hx.hosts)


async def test_a_socket_gone_for_a_moment_is_retried_until_it_is_back(hx: Fleet) -> None:
    """The runtime socket (which answered before) renamed away for 1 s: a command issued
    meanwhile still succeeds."""
    sock = hx.dir / "haproxy" / "admin.sock"
    hidden = sock.with_name("admin.sock.away")
    lb = pool(hx)
    await lb.members(hx.hosts)  # it answered: from now on a missing socket is a blip
    sock.rename(hidden)

    async def put_back() -> None:
        await anyio.sleep(1.0)
        hidden.rename(sock)

    async with anyio.create_task_group() as tg:
        tg.start_soon(put_back)
        members = await lb.members(hx.hosts)
    assert {h.name for h in hx.hosts} == set(members)


async def test_a_socket_never_reached_is_named_at_once_not_retried(
    hx: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Before it ever answered, a socket that is not there is no blip: the pool's first
    command fails at once (no 10 s of retries), naming the cause and the path; likewise a
    socket file nothing listens on (refused). (Both were retried for retry_for, and the
    cause was lost when a caller's shorter deadline came first, e.g. `status`'s 2 s.)"""
    sock = hx.dir / "haproxy" / "admin.sock"
    hidden = sock.with_name("admin.sock.away")
    sock.rename(hidden)
    try:
        t0 = time.monotonic()
        with anyio.fail_after(5), pytest.raises(BalancerError) as info:
            await pool(hx).members(hx.hosts)
        assert time.monotonic() - t0 < 5
        assert f"unreachable: No such file or directory: {sock}" in info.value.message
        assert "stats socket" in (info.value.hint or "")
    finally:
        hidden.rename(sock)
    # a short path: a unix socket's path is limited to ~107 bytes
    stale = tmp_path_factory.mktemp("s") / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))  # bound, never listening: a connect is refused
    try:
        with anyio.fail_after(5), pytest.raises(BalancerError) as info:
            await pool(hx, socket=str(stale)).members(hx.hosts)
        assert f"unreachable: Connection refused: {stale}" in info.value.message
        assert "nothing listens" in (info.value.hint or "")
    finally:
        left.close()
    assert {h.name for h in hx.hosts} == set(await pool(hx).members(hx.hosts))


async def test_dead_socket_is_a_balancer_error(hx: Fleet) -> None:
    """A socket nobody listens on maps to BalancerError (and PreflightError in preflight)."""
    lb = pool(hx, socket="haproxy/nobody.sock", retry_for=0.3)
    with pytest.raises(BalancerError) as info:
        await lb.members(hx.hosts)
    assert info.value.adapter == "haproxy"
    with pytest.raises(PreflightError):
        await lb.preflight(hx.hosts)


async def test_pool_members_lists_every_server_of_the_backend(hx: Fleet) -> None:
    """pool_members names each server of be_app by its HAProxy name, with its state."""
    await pool(hx).drain(hx.hosts[1])
    members = await pool(hx).pool_members()
    assert {n: m.state for n, m in members.items()} == {
        "h1": LbState.SERVING,
        "h2": LbState.DRAINING,
    }


async def test_a_down_server_with_nothing_in_flight_is_drained_at_once(hx: Fleet) -> None:
    """A server HAProxy reports DOWN never shows DRAIN: wait_drained puts it in maint and
    returns instead of waiting forever."""
    hx.raw("disable health be_app/h2")
    hx.raw("set server be_app/h2 health down")
    try:
        deadline = time.monotonic() + 10
        while not hx.status("h2").startswith("DOWN"):
            assert time.monotonic() < deadline, hx.status("h2")
            await anyio.sleep(0.05)
        lb = pool(hx)
        with anyio.fail_after(5):
            await lb.drain(hx.hosts[1])
            await lb.wait_drained(hx.hosts[1])
        assert hx.server_state("h2").admin_state & MAINT
    finally:
        hx.raw("enable health be_app/h2")
        hx.raw("set server be_app/h2 health up")
