"""What a run (and `status`, `serve`, the dry-run) works with: the config, its adapters, the
journal and the event sinks (`Fleet`), and what the fleet reports now (`Fleet.observe`: a
`Sighting`).

The engine knows adapters only through their Protocols; concrete classes come from the
plugin registry by `kind`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from immunity import plugins
from immunity.clock import Clock, SystemClock
from immunity.config import LoadedConfig, resolve_path
from immunity.domain import Event, HostRef, Member
from immunity.errors import ImmunityError
from immunity.fleet.state import Sighting
from immunity.hosts import ReadDeadline
from immunity.hosts.base import HostDriver
from immunity.journal import Journal
from immunity.journal import open_journal as _open
from immunity.journal.base import DeploymentRecord
from immunity.lb.base import LoadBalancer
from immunity.notify.base import Notifier
from immunity.probe import HttpProber, Prober
from immunity.signals.base import SignalSource
from immunity.signals.probe import NAME as PROBE
from immunity.signals.probe import ProbeSource

log = logging.getLogger("immunity")

EventSink = Callable[[Event], None]


READ_CONCURRENCY = 64
"""Hosts whose driver is asked at once when the engine reads the whole fleet."""


@dataclass
class Fleet:
    """The adapters of one app's fleet, built from its config."""

    loaded: LoadedConfig
    hosts: list[HostRef]
    lb: LoadBalancer
    driver: HostDriver
    signals: dict[str, SignalSource]
    notifiers: list[Notifier]
    journal: Journal
    prober: Prober
    sinks: list[EventSink] = field(default_factory=list)
    clock: Clock = field(default_factory=SystemClock)
    signal_views: dict[str, str] = field(default_factory=dict)
    """What each signal source said it sees of the fleet's traffic at preflight."""

    @property
    def config(self) -> Any:
        return self.loaded.config

    @property
    def app(self) -> str:
        return str(self.loaded.config.app)

    async def observe(
        self, *, lenient: bool = False, installed: bool = False, balancer_wait: float | None = None
    ) -> Sighting:
        """What the balancer and the drivers report now: the pool's members, then each
        host's active release (and with `installed` its installed releases), asked of up to
        `READ_CONCURRENCY` hosts at a time (one after another, 10,000 hosts took 10,000
        driver round trips in a row). Raises the balancer's error, and the first host's (in
        `hosts` order); with `lenient` a host whose driver does not answer (ImmunityError)
        runs None, has nothing installed, and its error is in `errors`. With `balancer_wait`
        (seconds) a balancer that raises or has not answered by then gives no members and
        its `balancer_error` instead."""
        members: Mapping[str, Member] = {}
        lb_error: str | None = None
        lb_hint: str | None = None
        try:
            with anyio.fail_after(balancer_wait):
                members = await self.lb.members(self.hosts)
        except (ImmunityError, TimeoutError) as lb_exc:
            if balancer_wait is None:
                raise
            lb_error = lb_exc.message if isinstance(lb_exc, ImmunityError) else None
            lb_hint = lb_exc.hint if isinstance(lb_exc, ImmunityError) else None
            lb_error = lb_error or f"the balancer did not answer within {balancer_wait:g} s"
        actives: dict[str, str | None] = {}
        releases: dict[str, list[str]] = {}
        failed: dict[str, Exception] = {}
        todo = iter(self.hosts)

        async def reader() -> None:
            # one of READ_CONCURRENCY readers taking the next host: not a task (and a
            # limiter's wait) per host, which at 10,000 hosts cost the loop 1 s of CPU
            for h in todo:
                try:
                    actives[h.name] = await self.driver.active_release(h)
                    if installed:
                        releases[h.name] = await self.driver.installed_releases(h)
                except Exception as exc:  # raised below, the first in host order
                    failed[h.name] = exc

        async with anyio.create_task_group() as tg:
            for _ in range(min(READ_CONCURRENCY, len(self.hosts))):
                tg.start_soon(reader)
        errors: dict[str, str] = {}
        for h in self.hosts:
            exc = failed.get(h.name)
            if exc is not None and not (lenient and isinstance(exc, ImmunityError)):
                raise exc
            if isinstance(exc, ImmunityError):
                actives[h.name], releases[h.name], errors[h.name] = None, [], exc.message
        names = [h.name for h in self.hosts]
        return Sighting(
            members,
            {n: actives[n] for n in names},
            {n: releases[n] for n in names} if installed else {},
            errors,
            lb_error,
            lb_hint,
        )

    async def aclose(self) -> None:
        closers: list[Any] = [
            self.lb,
            self.driver,
            self.prober,
            *self.signals.values(),
            *self.notifiers,
        ]
        for closer in closers:
            try:
                await closer.aclose()
            except Exception:  # closing must not hide the outcome
                log.debug("close failed", exc_info=True)


def host_refs(loaded: LoadedConfig) -> list[HostRef]:
    return [
        HostRef(
            name=h.name,
            address=h.address,
            port=h.port,
            lb_id=h.lb_id,
            scheme=h.scheme,
            meta=dict(h.meta),
        )
        for h in loaded.config.hosts
    ]


def open_journal(loaded: LoadedConfig) -> Journal:
    jc = loaded.config.journal
    return _open(resolve_path(loaded.base_dir, jc.path), jc.url)


def build_fleet(loaded: LoadedConfig, journal: Journal | None = None) -> Fleet:
    """Instantiate every adapter named by the config (no I/O happens here)."""
    base = loaded.base_dir
    cfg = loaded.config
    lb = plugins.adapter_class("lb", cfg.balancer.kind)(loaded.balancer, base_dir=base)
    driver = ReadDeadline(  # a stalled host's read ends: hosts/deadline.py
        plugins.adapter_class("hosts", cfg.driver.kind)(loaded.driver, base_dir=base),
        adapter=cfg.driver.kind,
    )
    signals = {
        name: plugins.adapter_class("signals", kind)(settings, base_dir=base)
        for name, (kind, settings) in loaded.signals.items()
    }
    if cfg.probe is not None:
        signals[PROBE] = ProbeSource(cfg.probe)
    notifiers = [
        plugins.adapter_class("notify", kind)(settings, base_dir=base)
        for kind, settings in loaded.notify
    ]
    return Fleet(
        loaded=loaded,
        hosts=host_refs(loaded),
        lb=lb,
        driver=driver,
        signals=signals,
        notifiers=notifiers,
        journal=journal or open_journal(loaded),
        prober=HttpProber(cfg.verify, cfg.warmup),
    )


def unknown_members(fleet: Fleet, pool: Mapping[str, Member]) -> list[str]:
    """Balancer ids of pool members that are neither hosts nor `unmanaged_members`."""
    known = {h.balancer_id for h in fleet.hosts} | set(fleet.config.unmanaged_members)
    return sorted(set(pool) - known)


async def changes(fleet: Fleet) -> list[DeploymentRecord]:
    """The app's runs, oldest first, past those that changed nothing (a no-op, a run stopped
    in its preflight: `DeploymentRecord.changed_nothing`)."""
    return [d for d in await fleet.journal.deployments(fleet.app) if not d.changed_nothing]


async def last_deployment(fleet: Fleet) -> DeploymentRecord | None:
    """The app's last run (a deployment or a rollback) that was not a no-op."""
    recs = await changes(fleet)
    return recs[-1] if recs else None


def by_release(actives: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Host names grouped by the release each runs (None under "no release")."""
    on: dict[str, list[str]] = {}
    for name, release in actives.items():
        on.setdefault(release or "no release", []).append(name)
    return on


def spelled(on: Mapping[str, list[str]]) -> str:
    """`by_release`'s groups as words: "h1, h2 on v1; h3 on v2"."""
    return "; ".join(f"{', '.join(names)} on {release}" for release, names in on.items())


def ran_before(record: DeploymentRecord) -> dict[str, str]:
    """What each host ran when `record`'s run began: a deployment's fallbacks; for a
    rollback, the releases it found (its fallbacks are where it goes, not where hosts are)."""
    key = "previous" if record.data.get("rollback") else "fallbacks"
    return {str(k): str(v) for k, v in dict(record.data.get(key, {})).items() if v}


def restart_only(record: DeploymentRecord) -> bool:
    """A finished deployment that moved no host to another release: every host already ran
    it (`deploy --force` walks them again; its revert targets are the release itself)."""
    before = set(ran_before(record).values())
    return (
        record.finished_at is not None
        and not record.data.get("rollback")
        and before == {record.release}
    )


async def last_change(fleet: Fleet) -> DeploymentRecord | None:
    """The run `rollback` undoes: the last one that changed a host's release, past no-ops
    (`unchanged`) and finished restarts of the running release (`deploy --force`), so a
    redeploy never takes the release before it out of reach."""
    return last_change_in(await changes(fleet))


def last_change_in(recs: list[DeploymentRecord]) -> DeploymentRecord | None:
    """`last_change` of `recs` (oldest first), already read."""
    recs = list(recs)
    while len(recs) > 1 and restart_only(recs[-1]):
        recs.pop()
    return recs[-1] if recs else None
