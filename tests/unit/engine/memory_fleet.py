"""A fleet in memory for engine tests: balancer, driver and prober that fail on cue.

Not a stand-in for any server's behaviour (the adapters have their contract suites against
real servers); it keeps the three views the engine acts on (pool state, active release,
health) and counts what the invariants need: how many hosts were out of the pool at once.
A fault is `(host, step)` with a mode: `fail` raises the adapter's error once, `hang`
never returns (the step's deadline ends it) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel

from immunity import config as cfgmod
from immunity.domain import HostRef, LbState, Member
from immunity.engine.context import Fleet, host_refs
from immunity.errors import BalancerError, HostError
from immunity.journal import SqliteJournal

Faults = dict[tuple[str, str], str]  # (host, step) -> "fail" | "hang"


class Cue:
    def __init__(self, faults: Faults) -> None:
        self.faults = dict(faults)

    async def check(self, host: HostRef, step: str) -> None:
        mode = self.faults.pop((host.name, step), None)
        if mode == "fail":
            raise HostError(f"{step} failed on cue", adapter="memory", host=host.name)
        if mode == "hang":
            await anyio.sleep_forever()


class MemoryBalancer:
    def __init__(self, hosts: Sequence[HostRef], cue: Cue) -> None:
        self.state = {h.name: LbState.SERVING for h in hosts}
        self.ids = {h.balancer_id: h.name for h in hosts}
        self.cue = cue
        self.peak_out = 0

    def _set(self, host: HostRef, state: LbState) -> None:
        self.state[host.name] = state
        out = sum(1 for s in self.state.values() if s is not LbState.SERVING)
        self.peak_out = max(self.peak_out, out)

    async def members(self, hosts: Sequence[HostRef]) -> dict[str, Member]:
        return {h.name: Member(h.name, self.state[h.name]) for h in hosts}

    async def pool_members(self) -> dict[str, Member]:
        return {bid: Member(bid, self.state[name]) for bid, name in self.ids.items()}

    async def drain(self, host: HostRef) -> None:
        try:
            await self.cue.check(host, "drain")
        except HostError as exc:
            raise BalancerError(exc.message, adapter="memory", host=host.name) from exc
        self._set(host, LbState.DRAINING)

    async def wait_drained(self, host: HostRef) -> None:
        await anyio.lowlevel.checkpoint()
        self._set(host, LbState.OUT)

    async def enable(self, host: HostRef) -> None:
        try:
            await self.cue.check(host, "enable")
        except HostError as exc:
            raise BalancerError(exc.message, adapter="memory", host=host.name) from exc
        self._set(host, LbState.SERVING)

    async def wait_healthy(self, host: HostRef) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        return None


class MemoryDriver:
    def __init__(self, hosts: Sequence[HostRef], cue: Cue, release: str = "v1") -> None:
        self.active: dict[str, str | None] = {h.name: release for h in hosts}
        self.installed = {h.name: [release] for h in hosts}
        self.cue = cue

    async def installed_releases(self, host: HostRef) -> list[str]:
        return list(self.installed[host.name])

    async def active_release(self, host: HostRef) -> str | None:
        return self.active[host.name]

    async def install(self, host: HostRef, release: str) -> None:
        await self.cue.check(host, "install")
        if release not in self.installed[host.name]:
            self.installed[host.name].append(release)

    async def stop(self, host: HostRef) -> None:
        await self.cue.check(host, "stop")
        self.active[host.name] = None

    async def start(self, host: HostRef, release: str) -> None:
        await self.cue.check(host, "start")
        self.active[host.name] = release

    async def check_release(self, release: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class MemoryProber:
    def __init__(self, cue: Cue) -> None:
        self.cue = cue

    async def verify(self, host: HostRef) -> None:
        await self.cue.check(host, "verify")

    async def warm_up(self, host: HostRef) -> None:
        await self.cue.check(host, "warmup")

    async def check_paths(self, hosts: Sequence[HostRef]) -> Sequence[str]:
        return []

    def last_answer(self, host: HostRef) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


CONFIG = """
app: shop
hosts:
  - {name: h1, port: 8001}
  - {name: h2, port: 8002}
  - {name: h3, port: 8003}
balancer: {kind: haproxy, socket: admin.sock, backend: be_app}
driver: {kind: local, root: hosts, releases: releases}
waves: ["100%"]
max_unavailable: MAXU
bake: {min: 0s, max: 5s, interval: 50ms, lag: 0s}
warmup: {timeout: 300ms}
timeouts: {drain: 300ms, stop: 300ms, install: 300ms, start: 300ms, verify: 300ms,
           enable: 300ms, revert: 20s}
lease_ttl: 5s
journal: {path: journal.db}
"""


def memory_fleet(
    tmp: Path, faults: Faults, *, max_unavailable: int = 1
) -> tuple[Fleet, MemoryBalancer, MemoryDriver]:
    path = tmp / "immunity.yaml"
    path.write_text(CONFIG.replace("MAXU", str(max_unavailable)))
    loaded = cfgmod.load(path)
    hosts = host_refs(loaded)
    cue = Cue(faults)
    lb, driver = MemoryBalancer(hosts, cue), MemoryDriver(hosts, cue)
    fleet = Fleet(
        loaded=loaded,
        hosts=hosts,
        lb=lb,  # type: ignore[arg-type]
        driver=driver,  # type: ignore[arg-type]
        signals={},
        notifiers=[],
        journal=SqliteJournal(tmp / "journal.db"),
        prober=MemoryProber(cue),  # type: ignore[arg-type]
    )
    return fleet, lb, driver
