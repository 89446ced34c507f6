"""One run's lifecycle, shared by deploy, resume, rollback and abort.

    async with Run(fleet, release, prepare=...) as run:   # lease, then prepare, then begin
        ...the body: waves, a revert, a rollback...        # heartbeat + signals run beside it
        run.conclude(RunOutcome.DEPLOYED, "...")           # journaled
    result = run.result                                    # frozen, from the run's fold

Entering takes the app's lease (LeaseHeld, with a hint that matches the holder: "wait for
it" only when it is alive, "resume" only when it is gone), runs `prepare` (e.g. preflight;
the lease is released if it raises) and begins the journal record (or, for a resume, takes
the record's lease over with a fresh fencing token). While the body runs, a heartbeat keeps
the lease and SIGINT/SIGTERM/SIGHUP ask the body to stop (`run.stopping`; scopes registered with
`run.on_stop` are cancelled: no new host is started, hosts in flight finish). Leaving
journals nothing the body did not say, finishes the record with the outcome, notifies the
team and releases the lease.

The signal handlers are installed before the lease is taken and removed after it is
released: no signal kills the process while it holds the lease. During `prepare` the lease
is heart-beaten too, and a signal cancels `prepare` (it only reads): the run is journaled
as stopped before any host was touched (`stopped_in: preflight`, a record that changed
nothing), the lease released, and entering raises `StoppedBeforeStart` with the result
(exit 130/143 in the CLI). Signals while the record is finished and the team notified are
held (those end within their own deadlines).

A lost lease (the heartbeat or any journal write finds the fencing token stale) stops every
walk at once, shielded or not, and ends the run `superseded` without another write. A
JournalError propagates (nothing more can be recorded): the walks in flight have put their
hosts back on the release they served (`HostSwitcher._restore`), and the error says which. Any other error finishes the run
`failed`, notifies, releases the lease and propagates (a bug: exit 1).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any

import anyio

from immunity.engine.capacity import CapacityGuard
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.engine.result import NOTIFIED, RunOutcome, RunResult
from immunity.errors import ImmunityError, JournalError, LeaseHeld, LeaseLost
from immunity.fleet.context import Fleet, ran_before
from immunity.fleet.preflight import refuse_over_unfinished
from immunity.fleet.state import FleetState
from immunity.journal import explain_lease_held, holder_alive, holder_name, new_deployment_id
from immunity.journal.base import DeploymentRecord, Lease
from immunity.notify.base import notify_all

log = logging.getLogger("immunity.engine")

Prepare = Callable[[], Awaitable[Mapping[str, Any]]]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that end a run (SIGINT: interrupted; SIGTERM, SIGHUP: terminated)."""


class StoppedBeforeStart(Exception):
    """Raised on entering a `Run` that a signal stopped during `prepare` (preflight): the
    record is journaled and finished, the lease released; `result` is how the run ended."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(result.reason)
        self.result = result


class Run:
    """See the module docstring. `release` is what the run rolls out (for a rollback, the
    release it leaves); `label` is the journal record's release column (default `release`)."""

    def __init__(
        self,
        fleet: Fleet,
        release: str,
        *,
        prepare: Prepare | None = None,
        resume: DeploymentRecord | None = None,
        label: str | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.fleet = fleet
        self.release = release
        self.label = label or release
        self.handle_signals = handle_signals
        self._prepare = prepare
        self._resume = resume
        self.stopping: RunOutcome | None = None  # INTERRUPTED | TERMINATED once signalled
        self._signal_name: str | None = None
        self._stop_scopes: set[anyio.CancelScope] = set()
        self._outcome: RunOutcome | None = None
        self._result: RunResult | None = None
        self._cm: AbstractAsyncContextManager[Run] | None = None
        # set on entering
        self.lease: Lease
        self.record: DeploymentRecord
        self.rec: Recorder
        self.view: FleetState  # the fleet as the run's journal entries say, folded as appended
        self.capacity: CapacityGuard
        self.switcher: HostSwitcher

    # -- what the body uses ----------------------------------------------------------

    @property
    def data(self) -> Mapping[str, Any]:
        """The record's data (what `prepare` returned: fallbacks, targets...)."""
        return self.record.data

    @property
    def resumed(self) -> bool:
        return self._resume is not None

    def on_stop(self, scope: anyio.CancelScope) -> anyio.CancelScope:
        """Cancel `scope` when a signal asks the run to stop (at once if it already did)."""
        self._stop_scopes.add(scope)
        if self.stopping:
            scope.cancel()
        return scope

    def forget_stop(self, scope: anyio.CancelScope) -> None:
        self._stop_scopes.discard(scope)

    async def conclude(
        self, outcome: RunOutcome, reason: str, *, message: str | None = None, **data: Any
    ) -> None:
        """Journal how the run ends (`deployment.<outcome in the past>`); the result is
        what the run's view says of this entry."""
        self._outcome = outcome
        await self.rec.record(
            f"deployment.{outcome.past}",
            message or reason,
            outcome=str(outcome),
            reason=reason,
            **data,
        )

    @property
    def concluded(self) -> bool:
        """Whether the body has said how the run ends (`conclude`)."""
        return self._outcome is not None

    @property
    def result(self) -> RunResult:
        if self._result is None:
            raise RuntimeError("the run has not ended")
        return self._result

    # -- the lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Run:
        self._cm = self._lifecycle()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Run]:
        # the signal handlers are installed before the lease is taken and removed only after
        # it is released: no signal kills the process while it holds the lease (preflight,
        # the journal's finish and the notifications included)
        receiver = (
            anyio.open_signal_receiver(*STOP_SIGNALS)
            if self.handle_signals
            else contextlib.nullcontext(None)
        )
        with run_collector(), receiver as signals:
            async with self._held(signals) as run:
                yield run

    @asynccontextmanager
    async def _held(self, signals: AsyncIterator[int] | None) -> AsyncIterator[Run]:
        fleet = self.fleet
        journal = fleet.journal
        cfg = fleet.config
        if self._resume is None:
            deployment_id = new_deployment_id()
            self.lease = await self._acquire(deployment_id, takeover=False)
            try:
                data = await self._prepared(signals)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await journal.release_lease(self.lease)
                raise
            if self.stopping:  # a signal during preflight: nothing was touched
                data = {"stopped_in": "preflight"}
            self.record = await journal.begin(
                fleet.app, self.label, data, deployment_id=deployment_id
            )
        else:
            self.record = self._resume
            self.lease = await self._acquire(self.record.id, takeover=True)
        self.view = FleetState(fleet.hosts, release=self.release, fallbacks=ran_before(self.record))
        if self._resume is not None:  # the one pass over the journal: entries fold as appended
            for entry in await journal.entries(self.record.id):
                self.view.apply(entry)
        self.rec = Recorder(
            fleet,
            self.record.id,
            self.release,
            self.lease.token,
            on_lost=self._lost,
            view=self.view,
        )
        self.capacity = CapacityGuard(cfg.max_unavailable, self.view.out)
        self.switcher = HostSwitcher(fleet, self.rec, self.capacity)
        if self.stopping:
            await self._stopped_before_start()
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeat)
                    if signals is not None:
                        tg.start_soon(self._signals, signals)
                    try:
                        yield self
                    finally:
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise first_immunity_error(group) from group
        except LeaseLost as exc:
            log.error("%s", exc.message)
            await self._end(RunOutcome.SUPERSEDED, exc.message, write=False)
            return  # the run is over; nothing more is written
        except JournalError as exc:
            self._say_restored(exc)
            raise
        except Exception as exc:
            with contextlib.suppress(ImmunityError):
                await self.conclude(RunOutcome.FAILED, f"stopped by an error: {exc}")
            await self._end(RunOutcome.FAILED, f"stopped by an error: {exc}", write=True)
            await self._close()
            raise
        if self._outcome is None:  # the body ended without saying how: a bug
            await self.conclude(RunOutcome.FAILED, "the run ended without an outcome")
        await self._end(self._outcome or RunOutcome.FAILED, "", write=True)
        await self._close()

    def _say_restored(self, exc: JournalError) -> None:
        """Add to `exc` what the walks in flight did unjournaled once the journal failed
        (`HostSwitcher.restored` / `not_restored`): exactly which hosts were put back, on
        which release, and which could not be. `resume` journals what it then finds."""
        switcher = getattr(self, "switcher", None)
        if switcher is None or not (
            switcher.restored or switcher.not_restored or switcher.switched_unjournaled
        ):
            return
        said: list[str] = []
        for host, release in sorted(switcher.switched_unjournaled.items()):
            said.append(
                f"{host} switched to {release} and serves it in the pool; only its "
                "host.switched was not journaled (left as it is)"
            )
        by_release: dict[str, list[str]] = {}
        for host, release in sorted(switcher.restored.items()):
            by_release.setdefault(release, []).append(host)
        for release, hosts in by_release.items():
            said.append(
                f"{', '.join(hosts)} put back serving {release} and in the pool, unjournaled "
                "(the step in flight was not journaled, so no next step was taken)"
            )
        for host, why in sorted(switcher.not_restored.items()):
            said.append(f"{host} could not be put back ({why}): it may be out of the pool")
        exc.message = f"{exc.message}; {'; '.join(said)}"
        exc.context["restored_unjournaled"] = ", ".join(sorted(switcher.restored)) or "none"
        if switcher.switched_unjournaled:
            exc.context["switched_unjournaled"] = ", ".join(sorted(switcher.switched_unjournaled))
        if switcher.not_restored:
            exc.context["not_restored"] = ", ".join(sorted(switcher.not_restored))
        log.error("journal lost mid-run: %s", "; ".join(said))

    async def _prepared(self, signals: AsyncIterator[int] | None) -> dict[str, Any]:
        """`prepare`'s data, with the lease kept (heartbeat) and signals heard meanwhile: a
        signal cancels it (`stopping` set, {} returned; it only reads, nothing is touched)."""
        data: dict[str, Any] = {}
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat)
                if signals is not None:

                    async def stop_on_signal() -> None:
                        async for signum in signals:
                            self._stop_by(signum)
                            tg.cancel_scope.cancel()
                            return

                    tg.start_soon(stop_on_signal)
                data = dict(await self._prepare()) if self._prepare else {}
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise only_error(group) from None
        return {} if self.stopping else data

    @property
    def stopped_by(self) -> str:
        """The signal that stopped the run ("SIGINT", "SIGTERM", "SIGHUP"): the reasons name
        it rather than say the outcome again ("interrupted" … "interrupted by signal")."""
        return self._signal_name or "a signal"

    async def _stopped_before_start(self) -> None:
        """Journal a run stopped by a signal in its preflight (`deployment.stopping`, then
        `deployment.interrupted` with `stopped_in: preflight`), finish the record, release
        the lease and raise StoppedBeforeStart with the result. Nobody is notified: nothing
        happened to the fleet."""
        assert self.stopping is not None
        name = self._signal_name or "a signal"
        await self.rec.record(
            "deployment.stopping",
            f"{name} during preflight: stopping before any host is touched",
            signal=name,
        )
        await self.conclude(
            self.stopping,
            f"{self.stopping} by {name} during preflight, before any host was touched",
            stopped_in="preflight",
        )
        await self._end(self.stopping, "", write=True)
        await self.fleet.journal.release_lease(self.lease)
        raise StoppedBeforeStart(self.result)

    async def _end(self, outcome: RunOutcome, reason: str, *, write: bool) -> None:
        journal = self.fleet.journal
        self._result = RunResult.of(
            self.view.view(),
            self.record,
            release=self.release,
            default=(outcome, reason),
            now=self.fleet.clock.now(),
            final=not write,
        )
        if write:
            r = self._result
            await journal.finish(
                self.record.id,
                str(r.outcome),
                r.reason,
                {"result": r.to_dict()},
                token=self.lease.token,
            )

    async def _close(self) -> None:
        """Tell the team how the run ended (`deployment.<outcome>` with the result's
        `NOTIFIED` keys and its verdict), then release the lease."""
        r = self.result.to_dict(hosts=False)  # not every host's steps again
        data = {k: r[k] for k in NOTIFIED} | ({"verdict": r["verdict"]} if r["verdict"] else {})
        past = self.result.outcome.past
        event = self.rec.event(f"deployment.{past}", self.result.reason or r["outcome"], data)
        await notify_all(self.fleet.notifiers, event, self.rec.record)
        await self.fleet.journal.release_lease(self.lease)

    async def _acquire(self, deployment_id: str, *, takeover: bool) -> Lease:
        """Take the app's lease. A takeover never takes it from a holder whose process still
        runs on this machine, even a silent one: woken, it could finish the action it was in
        (fencing covers journal writes and each step's start, not an action in flight)."""
        fleet = self.fleet
        current = await fleet.journal.current_lease(fleet.app)
        now = fleet.clock.now()
        alive = None if current is None else holder_alive(current.holder, current.acquired_at, now)
        try:
            if takeover and current is not None and alive:
                raise LeaseHeld(f"{current.holder} still runs")
            return await fleet.journal.acquire_lease(
                fleet.app,
                holder_name(),
                deployment_id,
                fleet.config.lease_ttl,
                takeover=takeover,
                holder_dead=alive is False,
            )
        except LeaseHeld as exc:
            explained = await explain_lease_held(
                fleet.journal, fleet.app, fleet.config.lease_ttl, exc, now
            )
            if not takeover and not explained.context.get("running", True):
                # nobody runs it any more: not "another orchestrator deploys" (exit 5, which
                # CI retries) but an unfinished deployment to resume or abort (exit 2)
                await refuse_over_unfinished(fleet)
                held = await fleet.journal.current_lease(fleet.app)
                ran = {d.id for d in await fleet.journal.deployments(fleet.app)}
                dead = explained.context.get("alive") is False
                if dead and held is not None and held.deployment_id not in ran:
                    # its holder ended in its preflight (SIGKILL, a crash) before journaling a
                    # run: it only read, there is nothing to resume, and `resume` would find
                    # nothing; the lease is taken over instead of refusing every deploy for
                    # good. Only a holder proven dead (its PID on this machine): one silent
                    # on another machine may be a live run cut off, refused (exit 5) as before
                    return await fleet.journal.acquire_lease(
                        fleet.app,
                        holder_name(),
                        deployment_id,
                        fleet.config.lease_ttl,
                        takeover=True,
                        holder_dead=True,
                    )
            raise explained from exc

    async def _heartbeat(self) -> None:
        every = max(0.2, self.fleet.config.lease_ttl / 3)
        while True:
            await self.fleet.clock.sleep(every)
            try:
                await self.fleet.journal.heartbeat(self.lease)
            except LeaseLost:
                self._lost()
                raise

    def _lost(self) -> None:
        """The lease is gone: change nothing more, not even in shielded walks."""
        switcher = getattr(self, "switcher", None)
        if switcher is not None:
            switcher.cancel_all()

    def _stop_by(self, signum: int) -> None:
        """Ask the run to stop: SIGINT interrupts it, SIGTERM and SIGHUP terminate it."""
        self._signal_name = signal.Signals(signum).name
        self.stopping = RunOutcome.INTERRUPTED if signum == signal.SIGINT else RunOutcome.TERMINATED

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        # SIGHUP (the operator's terminal or ssh session went away) ends the run as SIGTERM
        # does: by default it would kill the process mid-step, a host out of the pool.
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping:
                await self.rec.record(
                    "deployment.signal_repeated",
                    f"{name} again: still finishing the hosts in flight",
                    signal=name,
                )
                continue
            self._stop_by(signum)
            await self.rec.record(
                "deployment.stopping",
                f"{name}: starting no new work, finishing hosts in flight",
                signal=name,
            )
            for scope in list(self._stop_scopes):
                scope.cancel()


def only_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a task group raised (`first_immunity_error` when there are more)."""
    if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
        return group.exceptions[0]
    return first_immunity_error(group)


RUN_GC_THRESHOLD = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds while a run goes on (Python's: 700, 10, 10)."""

_collector_runs = 0  # runs in this process inside `run_collector` now
_collector_saved: tuple[int, int, int] | None = None
_collector_lock = threading.Lock()


@contextmanager
def run_collector() -> Iterator[None]:
    """Inside: the objects alive when the first run began (modules, the config, the fleet:
    128,000 at 10,000 hosts) are left out of the cyclic collector's passes (`gc.freeze`),
    and a collection starts after 10,000 new objects, not 700. Restored when the last run
    of the process ends (`gc.unfreeze`: those objects are collected as before).

    Reference counting still frees almost everything at once; the cyclic collector only
    finds cycles. At 10,000 hosts, with Python's thresholds, it ran 2,600 times for 7 s of
    a run's 26 s of CPU (a full pass: 155 ms of CPU), mostly while 1,000 walks crossed a
    step boundary together, every walk waiting for it."""
    global _collector_runs, _collector_saved
    with _collector_lock:
        if _collector_runs == 0:
            _collector_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*RUN_GC_THRESHOLD)
        _collector_runs += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_runs -= 1
            if _collector_runs == 0 and _collector_saved is not None:
                gc.set_threshold(*_collector_saved)
                gc.unfreeze()


def first_immunity_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a task group raised, as our own error when there is one (LeaseLost and
    JournalError first: they mean "change nothing more")."""
    found: list[ImmunityError] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            elif isinstance(e, ImmunityError):
                found.append(e)

    walk(group)
    for kind in (LeaseLost, JournalError, ImmunityError):
        for e in found:
            if isinstance(e, kind):
                return e
    return group
