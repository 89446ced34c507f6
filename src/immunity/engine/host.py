"""One host's switch: drain → stop → install → start → verify → warm up → enable.

The balancer, the driver and the prober (verify, warm-up) do the work; this module orders
the steps, gives each its deadline and journals it.

Each step is idempotent and journaled before and after (`host.step_started`,
`host.step_finished` or `host.step_failed`); the caller owns no deadline here because each
step has its own from `timeouts`. A switch, once started, is shielded from cancellation:
Ctrl-C or a failing sibling never leaves a host half-way without the journal saying so.

A journal write that fails mid-walk (JournalError: PostgreSQL away past its `timeout_s`,
SQLite's disk full or stalled past its deadline) ends the walk: nothing more can be
journaled, so no next step is taken. The host is put back as it was when its walk began
(the release it served started again if it was stopped, proven healthy, back in the pool)
within the steps' own deadlines, and the switcher keeps what it did unjournaled
(`restored`, `not_restored`) for the run to say and to journal once it can. A walk whose
every step is done (the host serves the new release in the pool) and whose final
`host.switched` write fails is left as it is (`switched_unjournaled`): it is not put back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio

from immunity.domain import HostRef, LbState
from immunity.engine.capacity import CapacityGuard
from immunity.engine.record import Entry, Recorder
from immunity.errors import ImmunityError, JournalError, StepFailed
from immunity.fleet.context import Fleet

log = logging.getLogger("immunity.engine")

STEPS = ("drain", "stop", "install", "start", "verify", "warmup", "enable")


class HostSwitcher:
    def __init__(
        self,
        fleet: Fleet,
        rec: Recorder,
        capacity: CapacityGuard,
        *,
        warmup: bool = True,
        drain: bool = True,
    ) -> None:
        self.fleet = fleet
        self.rec = rec
        self.capacity = capacity
        self.do_warmup = warmup
        self.do_drain = drain
        self.last_answer: dict[str, str] = {}  # host -> why its drain waits
        # Hosts this switcher has asked the balancer to drain and not yet seen healthy
        # again: the balancer may still call them serving for a moment. Not the fold's
        # `out`: a host is out there from its journaled drain start, also while its drain
        # waits, and two waiting drains would each wait on the other (docs/state-machine.md)
        self._leaving: dict[str, str] = {}  # host name -> its balancer id
        self._drain_lock = anyio.Lock()
        self._witness: HostRef | None = None  # see _another_serves
        self._by_id = {h.balancer_id: h for h in fleet.hosts}
        self._shields: set[anyio.CancelScope] = set()
        # hosts put back unjournaled after a journal write failed mid-walk: name -> the
        # release each serves again; and those that could not be (name -> why)
        self.restored: dict[str, str] = {}
        self.not_restored: dict[str, str] = {}
        # hosts whose walk completed (serving the release in the pool) but whose
        # `host.switched` could not be journaled: name -> the release each serves; left alone
        self.switched_unjournaled: dict[str, str] = {}

    @contextmanager
    def shielded(self) -> Iterator[anyio.CancelScope]:
        """A scope that neither Ctrl-C nor a failing sibling cancels; only `cancel_all`
        (the lease was lost: change nothing more) does."""
        with anyio.CancelScope(shield=True) as scope:
            self._shields.add(scope)
            try:
                yield scope
            finally:
                self._shields.discard(scope)

    def cancel_all(self) -> None:
        """Stop every walk in flight, shielded or not (the lease is lost)."""
        for scope in list(self._shields):
            scope.cancel()

    async def switch(
        self,
        host: HostRef,
        release: str,
        *,
        purpose: str = "deploy",
        shield: bool = True,
        restart: bool = False,
    ) -> None:
        """Move `host` to `release` and back into the pool. Raises StepFailed (the host keeps
        its capacity slot: the caller walks it back or parks it) or CapacityExhausted.

        With `shield` (the default) nothing outside can cancel the walk once it started;
        the immune response passes `shield=False` because it shields itself as a whole and
        must be able to stop at its own deadline. With `restart` a host already running
        `release` is walked all the same (drain, stop, install, start: `deploy --force`).
        """
        await self.capacity.take(host.name)
        if shield:
            with self.shielded():
                await self._walk(host, release, purpose, restart)
        else:
            await self._walk(host, release, purpose, restart)
        await self.capacity.give_back(host.name)

    async def _walk(self, host: HostRef, release: str, purpose: str, restart: bool) -> None:
        cfg = self.fleet.config
        t = cfg.timeouts
        lb, drv = self.fleet.lb, self.fleet.driver

        async def drain() -> None:
            await self._drain_keeping_one_serving(host)
            await lb.wait_drained(host)

        async def enable() -> None:
            await lb.enable(host)
            await lb.wait_healthy(host)
            self._leaving.pop(host.name, None)

        # A host already running `release` (a revert of a host whose switch failed before
        # it was stopped, a resume after the start step) only needs to be proven healthy and
        # put back: draining it again could wait on the very request that made it fail.
        try:
            running = await drv.active_release(host)
        except ImmunityError:
            running = None
        steps: list[tuple[str, float, Callable[[], Awaitable[None]]]] = []
        if running != release or restart:
            if self.do_drain:
                steps.append(("drain", t.drain, drain))
            steps += [
                ("stop", t.stop, lambda: drv.stop(host)),
                ("install", t.install, lambda: drv.install(host, release)),
                ("start", t.start, lambda: drv.start(host, release)),
            ]
        probe = self.fleet.prober
        steps.append(("verify", t.verify, lambda: probe.verify(host)))
        if self.do_warmup:
            steps.append(("warmup", cfg.warmup.timeout, lambda: probe.warm_up(host)))
        if self.do_drain:
            steps.append(("enable", t.enable, enable))
        done: Entry | None = None  # the last step's finish, journaled with what comes next
        try:
            for name, timeout, action in steps:
                done = await self._step(host, release, purpose, name, timeout, action, done)
        except JournalError:
            # nothing more can be journaled: take no next step, put the host back as it was
            await self._restore(host, running)
            raise
        # Every step's action is done: the host serves `release` in the pool. A journal that
        # fails now loses only the record of it; the host is left as it is (putting it back
        # would be a change made after the journal failed, and undo a completed switch).
        try:
            switched = Entry(
                "host.switched",
                f"{host.name} serves {release}",
                host.name,
                data={"release": release, "purpose": purpose},
            )
            await self.rec.record_all([done, switched] if done is not None else [switched])
        except JournalError:
            self.switched_unjournaled[host.name] = release
            raise

    async def _restore(self, host: HostRef, before: str | None) -> None:
        """Put `host` back serving `before` (what it ran when its walk began) and into the
        pool, unjournaled: the journal just failed. Each action is idempotent and has its
        step's deadline; the whole is shielded (a failing sibling, the heartbeat's own
        JournalError, never leaves it half done) and records the outcome in `restored` or
        `not_restored`. A host seen serving `before` in the pool is left as it is."""
        cfg = self.fleet.config
        t = cfg.timeouts
        lb, drv = self.fleet.lb, self.fleet.driver
        self._leaving.pop(host.name, None)
        if before is None:
            self.not_restored[host.name] = "it ran no release when its walk began"
            return
        budget = t.stop + t.install + t.start + t.verify + t.enable
        try:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + budget) as scope:
                try:
                    running: str | None = await drv.active_release(host)
                except ImmunityError:
                    running = None
                member = (await lb.members([host])).get(host.name)
                if running == before and member is not None and member.state is LbState.SERVING:
                    return  # nothing of the walk was done to it (or it is undone)
                if running != before:
                    with anyio.fail_after(t.stop):
                        await drv.stop(host)
                    with anyio.fail_after(t.install):
                        await drv.install(host, before)  # installed already: a no-op
                    with anyio.fail_after(t.start):
                        await drv.start(host, before)
                with anyio.fail_after(t.verify):
                    await self.fleet.prober.verify(host)
                with anyio.fail_after(t.enable):
                    await lb.enable(host)
                    await lb.wait_healthy(host)
            if scope.cancelled_caught:
                raise TimeoutError
        except (TimeoutError, ImmunityError) as exc:
            why = str(exc) or f"not back within {budget:g}s"
            self.not_restored[host.name] = why
            log.error("%s: could not be put back on %s: %s", host.name, before, why)
            return
        self.restored[host.name] = before
        log.warning(
            "%s: the journal failed mid-walk; put back serving %s, in the pool (unjournaled)",
            host.name,
            before,
        )

    async def _drain_keeping_one_serving(self, host: HostRef) -> None:
        """Drain `host` once another pool member serves; wait (within the drain step's
        deadline) while it would be the last one.

        `max_unavailable` below the fleet size keeps a host serving as long as the others are
        healthy; this also covers members that went DOWN on their own meanwhile. A drain
        marks its host as leaving *before* it checks, so two parallel drains never count
        each other as the one left serving: the first check (`_witness_serves`) needs no
        lock, and the whole-pool check (`_another_serves`) runs under one, unmarking the
        host before the lock is released when it must wait.
        """
        lb = self.fleet.lb
        while True:
            was_leaving = host.name in self._leaving
            self._leaving[host.name] = host.balancer_id
            try:
                ok = await self._witness_serves(host)
                if not ok:
                    async with self._drain_lock:
                        ok = await self._another_serves(host)
                        if not ok and not was_leaving:
                            self._leaving.pop(host.name, None)
            except BaseException:  # the step's deadline, a balancer error: not draining it
                if not was_leaving:
                    self._leaving.pop(host.name, None)
                raise
            if ok:
                await lb.drain(host)
                self.last_answer.pop(host.name, None)
                return
            self.last_answer[host.name] = (
                "no other pool member serving: draining it would leave customers none"
            )
            await self.fleet.clock.sleep(0.2)

    async def _witness_serves(self, host: HostRef) -> bool:
        """The quick check, one small read: `host` serves nobody, or the *witness* (a fleet
        host that served at the last whole-pool read) serves now and was not marked leaving
        before or during the read. False means "not settled": read the whole pool.

        A drain relies on a witness only when that witness was marked leaving after the
        drain's own mark, and such a later drain never relies on an earlier one: the hosts
        relied upon form chains that end in a host that stays serving. At 10,000 hosts, one
        pool read per drain (under a lock) was the orchestrator's largest cost.
        """
        w = self._witness
        if w is None or w.name == host.name or w.name in self._leaving:
            return False
        seen = await self.fleet.lb.members([w, host])
        mine, other = seen.get(host.name), seen.get(w.name)
        if mine is None or mine.state is not LbState.SERVING:
            return True
        return other is not None and other.state is LbState.SERVING and w.name not in self._leaving

    async def _another_serves(self, host: HostRef) -> bool:
        """The whole-pool check: `host` serves nobody, or another pool member the balancer
        calls serving now is not marked leaving. Picks the next witness, from the end of the
        pool (the hosts drained last)."""
        lb = self.fleet.lb
        pool = await lb.pool_members()
        me = pool.get(host.balancer_id)
        if me is None or me.state is not LbState.SERVING:
            return True
        leaving = set(self._leaving.values())
        self._witness = None
        others = False
        for name in reversed(pool):
            m = pool[name]
            if name != host.balancer_id and m.state is LbState.SERVING and name not in leaving:
                others = True
                self._witness = self._by_id.get(name)
                if self._witness is not None:
                    break
        return others

    async def _step(
        self,
        host: HostRef,
        release: str,
        purpose: str,
        step: str,
        limit_s: float,
        action: Callable[[], Awaitable[None]],
        done: Entry | None = None,
    ) -> Entry:
        """Journal the step's start, run `action` within `limit_s`, and return its
        `host.step_finished` for the caller to journal with what comes next. A failure
        (StepFailed) is journaled here and raised.

        `done`, the previous step's finish, is journaled in the same write as this start
        (one durable round trip per step, not two; both on disk, in order, before the action
        begins, exactly as two writes would leave them). At 10,000 hosts a walk's 15 writes
        one after another were most of the time the orchestrator added to each switch.
        """
        where = {"release": release, "purpose": purpose}
        start = Entry("host.step_started", f"{host.name}: {step}", host.name, step, where)
        await self.rec.record_all([done, start] if done is not None else [start])
        started = self.fleet.clock.monotonic()
        try:
            # `anyio.fail_after` without its two generator layers and four backend look-ups:
            # one cancel scope with the step's deadline (1,000 walks cross a step boundary
            # together at 10,000 hosts; the loop pays this once per step per walk)
            scope = anyio.CancelScope(deadline=anyio.current_time() + limit_s)
            with scope:
                await action()
            if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
                raise TimeoutError
        except (TimeoutError, ImmunityError) as exc:
            err = self._failure(host, step, limit_s, exc)
            await self.rec.record(
                "host.step_failed", str(err), host=host.name, step=step, error=str(err), **where
            )
            raise err from exc
        seconds = round(self.fleet.clock.monotonic() - started, 3)
        return Entry(
            "host.step_finished",
            f"{host.name}: {step} done",
            host.name,
            step,
            {"seconds": seconds, **where},
        )

    def _failure(self, host: HostRef, step: str, limit_s: float, exc: Exception) -> StepFailed:
        """What a step that raised `exc` (its deadline passed: TimeoutError) journals and
        raises, with the last answer of the wait that timed out."""
        if isinstance(exc, StepFailed):
            return exc
        if isinstance(exc, ImmunityError):
            return StepFailed(
                f"{host.name}: {step} failed: {exc.message}",
                host=host.name,
                step=step,
                hint=exc.hint,
            )
        last = (
            self.fleet.prober.last_answer(host)
            if step in ("verify", "warmup")
            else self.last_answer.get(host.name)
            if step == "drain"
            else None
        )
        return StepFailed(
            f"{host.name}: {step} did not finish within {limit_s:g}s"
            + (f" (last answer: {last})" if last else ""),
            host=host.name,
            step=step,
            hint=f"raise timeouts.{step if step != 'warmup' else 'warmup.timeout'} or look at the host",
        )
