"""HAProxy backend as the pool, driven through the runtime API (HAProxy 2.4+).

Commands used: ``set server B/S state drain|maint|ready``, ``show stat B 4 -1``,
``show servers state B``. A host's HAProxy server name is `HostRef.balancer_id`.

* drain: admin state ``drain`` (no new requests; in-flight ones and health checks go on).
* drained: ``scur`` 0 and ``qcur`` 0, after which the server is put in ``maint`` — so "drained"
  means out of the pool *and* nothing in flight. A ``DOWN`` server never shows ``DRAIN``; with
  nothing in flight it counts as drained at once.
* enable: ``ready``.
* healthy: status exactly ``UP`` with a passing layer 4/6/7 check result, after a check that
  ran since enable (HAProxy shows ``UP`` right after leaving maint without checking; see
  `wait_healthy`). Servers without checks (``no check``) count as healthy.

Status -> `LbState`: ``UP``/``UP n/m``/``no check`` -> serving (``UP n/m`` is up but a check
failed; it still takes traffic); ``DRAIN`` and ``NOLB`` (soft-stopped, no new traffic) ->
draining; ``MAINT*`` -> out; ``DOWN``/``DOWN n/m`` and anything else -> unhealthy.

Runtime changes are lost on a HAProxy reload unless ``server-state-file`` is used; the engine
reads state back instead of trusting what it set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict

from immunity.clients.haproxy import ADAPTER, HAProxyClient, ServerStat
from immunity.config import resolve_path
from immunity.config.types import Duration
from immunity.domain import HostRef, LbState, Member
from immunity.errors import BalancerError, PreflightError

_HEALTHY_CHECKS = ("L4OK", "L6OK", "L7OK", "L7OKC")


def lb_state(status: str) -> LbState:
    """Map a ``show stat`` status to an `LbState` (see the module docstring)."""
    s = status.strip().upper()
    if s.startswith("MAINT"):
        return LbState.OUT
    if s.startswith("DRAIN") or s.startswith("NOLB"):
        return LbState.DRAINING
    if s.startswith("UP") or s == "NO CHECK":
        return LbState.SERVING
    return LbState.UNHEALTHY


def _check_passed(stat: ServerStat) -> bool:
    if stat.status.strip().lower() == "no check":
        return True
    # "* L7OK" means a new check is running and the last result was L7OK.
    return stat.check_status.lstrip("* ").upper() in _HEALTHY_CHECKS


class HAProxyPool:
    """`LoadBalancer` over one HAProxy backend."""

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        socket: str
        """Path of the runtime API unix socket (`stats socket ... level admin`)."""
        backend: str = "be_app"
        """The HAProxy backend whose servers are the fleet (server names = hosts' lb_id)."""
        poll_interval: Duration = 0.1
        """Time between two `show stat` reads while waiting for a drain or health."""
        timeout: Duration = 5.0
        """Per-command socket timeout."""
        retry_for: Duration = 10.0
        """How long one command is retried while the socket does not answer (a reload, a
        blip); the step's own deadline still bounds it. A socket that never answered and is
        not there (no such file, refused) is named at once instead."""

    def __init__(self, settings: HAProxyPool.Settings, *, base_dir: Path) -> None:
        self.settings = settings
        self.backend = settings.backend
        self.client = HAProxyClient(
            resolve_path(base_dir, settings.socket),
            timeout=settings.timeout,
            retry_for=settings.retry_for,
        )

    async def _stat(self, host: HostRef) -> ServerStat:
        stats = await self.client.show_stat(self.backend, host=host.name)
        stat = stats.get(host.balancer_id)
        if stat is None:
            raise BalancerError(
                f"server {host.balancer_id!r} is not in HAProxy backend {self.backend!r}",
                adapter=ADAPTER,
                host=host.name,
                hint=f"servers in {self.backend}: {', '.join(sorted(stats)) or 'none'}",
            )
        return stat

    async def members(self, hosts: Sequence[HostRef]) -> dict[str, Member]:
        stats = await self.client.show_stat(self.backend)
        out: dict[str, Member] = {}
        for h in hosts:
            st = stats.get(h.balancer_id)
            if st is None:
                out[h.name] = Member(h.name, LbState.OUT, 0, f"not in backend {self.backend}")
                continue
            detail = st.status + (f" check={st.check_status}" if st.check_status else "")
            out[h.name] = Member(h.name, lb_state(st.status), st.scur + st.qcur, detail)
        return out

    async def pool_members(self) -> dict[str, Member]:
        stats = await self.client.show_stat(self.backend)
        return {
            name: Member(
                name,
                lb_state(st.status),
                st.scur + st.qcur,
                st.status + (f" check={st.check_status}" if st.check_status else ""),
            )
            for name, st in stats.items()
        }

    async def drain(self, host: HostRef) -> None:
        stat = await self._stat(host)
        if lb_state(stat.status) in (LbState.DRAINING, LbState.OUT):
            return  # already draining or out: draining a maint server would put it back in
        await self.client.set_state(self.backend, host.balancer_id, "drain", host=host.name)

    async def wait_drained(self, host: HostRef) -> None:
        while True:
            stat = await self._stat(host)
            state = lb_state(stat.status)
            if state is LbState.UNHEALTHY and stat.scur == 0 and stat.qcur == 0:
                # A DOWN server gets no traffic and never shows DRAIN: with nothing in
                # flight it is drained at once; maint keeps it out when it comes back UP.
                await self.client.set_state(self.backend, host.balancer_id, "maint", host=host.name)
                return
            if state is LbState.SERVING or state is LbState.UNHEALTHY:
                # Someone put it back (or it never left): ask again, drained must mean out.
                await self.client.set_state(self.backend, host.balancer_id, "drain", host=host.name)
            elif stat.scur == 0 and stat.qcur == 0:
                if state is not LbState.OUT:
                    await self.client.set_state(
                        self.backend, host.balancer_id, "maint", host=host.name
                    )
                return
            await anyio.sleep(self.settings.poll_interval)

    async def enable(self, host: HostRef) -> None:
        stat = await self._stat(host)
        if lb_state(stat.status) is LbState.SERVING and stat.status.strip().upper() == "UP":
            return
        await self.client.set_state(self.backend, host.balancer_id, "ready", host=host.name)

    async def wait_healthy(self, host: HostRef) -> None:
        # Right after `ready` HAProxy shows "UP 1/2" (up, one failure from DOWN) until the
        # first check runs; then "UP" or "DOWN". So a plain "UP" seen after any other status
        # in this wait proves a check passed since enable. A plain "UP" on the first poll is
        # trusted when it is older than a second (`lastchg`), else confirmed a second later
        # (covers `fall 1`, where leaving maint shows "UP" before any check).
        saw_other = False
        first_up: float | None = None
        while True:
            stat = await self._stat(host)
            status = stat.status.strip().upper()
            if status == "NO CHECK":
                return
            if status == "UP" and _check_passed(stat):
                if saw_other or _int(stat.raw.get("lastchg")) >= 2:
                    return
                now = anyio.current_time()
                first_up = now if first_up is None else first_up
                if now - first_up >= 1.0:
                    return
            else:
                saw_other = True
                first_up = None
            await anyio.sleep(self.settings.poll_interval)

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        try:
            stats = await self.client.show_stat(self.backend)
        except BalancerError as exc:
            raise PreflightError(
                f"HAProxy runtime API unusable: {exc.message}",
                hint=exc.hint or "check balancer.socket and that HAProxy runs",
                context=exc.context,
            ) from exc
        if not stats:
            raise PreflightError(
                f"HAProxy backend {self.backend!r} not found or has no servers",
                hint="check balancer.backend",
            )
        missing = [h.balancer_id for h in hosts if h.balancer_id not in stats]
        if missing:
            raise PreflightError(
                f"servers missing from HAProxy backend {self.backend!r}: {', '.join(missing)}",
                hint=f"servers in {self.backend}: {', '.join(sorted(stats))}",
            )

    async def recent_sessions(self, hosts: Sequence[HostRef]) -> dict[str, tuple[int, int]]:
        """HAProxy's own view of current traffic, for preflight's cross-check with the
        signals: each host's (seconds since it was last given a session, requests in all),
        from ``show stat`` (`lastsess`, `req_tot`); a host never given one is left out."""
        stats = await self.client.show_stat(self.backend)
        out: dict[str, tuple[int, int]] = {}
        for h in hosts:
            st = stats.get(h.balancer_id)
            try:
                last = int(st.raw.get("lastsess") or -1) if st is not None else -1
            except ValueError:
                last = -1
            if st is not None and last >= 0:
                out[h.name] = (last, st.req_tot)
        return out

    async def aclose(self) -> None:
        return None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
