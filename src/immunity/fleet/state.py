"""The fleet as the journal and the fleet itself say it is: derived, never kept on the side.

    derive(entries, seen, hosts, release=, fallbacks=) -> FleetView
    FleetState(hosts, release=, fallbacks=).apply(entry) ... .view() -> FleetView

`entries` are one run's journal entries (in order); `seen` is a `Sighting` (what
`Fleet.observe` returns: the balancer's members and each host's active release now), or None
for the journal alone. Each host gets a `HostPhase` (the states of
docs/state-machine.md), the release the journal says it should serve, what it runs and
whether it is in the pool, and every step it took. The view holds the waves that passed,
whether a revert is in progress (and why), the last verdict, how the run concluded, the hosts
whose walk failed, the cohorts and the hosts out of the pool (the capacity in use); where the
journal and the fleet disagree it says so. It is the one reader of what the journal means:
the run's result (`RunResult.of`), its bakes' resume points (`FleetState.bakes`, the
analysis's own fold of its entries) and the impact probe's phase boundaries come from it.

`FleetState` is the same derivation folded one entry at a time: a run applies every entry it
appends (the `Recorder` does), so the waves, the capacity guard and the cohorts read it at
O(1) per entry, never re-deriving from the whole journal. What the engine observes of the
fleet is journaled too (`observed` in `deployment.started`, `deployment.resumed`,
`immune.started`), so the journal alone rebuilds the live view: `derive(entries)` equals the
state the run folded from the same entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from immunity.analysis.evidence import BakeLedger
from immunity.domain import HostRef, LbState, Member
from immunity.impact import BOUNDARY_KINDS
from immunity.journal.base import JournalEntry


class HostPhase(StrEnum):
    SERVING = "serving"  # in the pool, no walk in flight
    DRAINING = "draining"  # a step of the walk started and did not finish: unknown, re-walked
    STOPPED = "stopped"
    INSTALLED = "installed"
    STARTED = "started"
    VERIFIED = "verified"
    WARMING = "warming"
    ENABLING = "enabling"
    FAILED = "failed"  # its last step failed; out of the pool until a walk puts it back
    OUT = "out"  # out of the pool with no walk in flight (found so, or left so)


# the phase a host is in once step X has *started* (docs/state-machine.md)
_IN_STEP = {
    "drain": HostPhase.DRAINING,
    "stop": HostPhase.STOPPED,
    "install": HostPhase.INSTALLED,
    "start": HostPhase.STARTED,
    "verify": HostPhase.VERIFIED,
    "warmup": HostPhase.WARMING,
    "enable": HostPhase.ENABLING,
}

Observed = Mapping[str, tuple[LbState | None, str | None]]


@dataclass(frozen=True)
class Sighting:
    """The fleet as the balancer and the hosts' drivers report it now (`Fleet.observe`)."""

    members: Mapping[str, Member]  # by host name; a host missing is not in the balancer
    actives: Mapping[str, str | None]  # each host's active release, in `hosts` order
    installed: Mapping[str, list[str]] = field(default_factory=dict)  # when asked for
    errors: Mapping[str, str] = field(default_factory=dict)  # drivers that did not answer
    balancer_error: str | None = None  # `observe(balancer_wait=)`: why there are no members
    balancer_hint: str | None = None  # and what to do about it, when the balancer's error says

    @property
    def states(self) -> dict[str, tuple[LbState | None, str | None]]:
        """Per host: its pool state (None: not in the balancer) and active release."""
        out: dict[str, tuple[LbState | None, str | None]] = {}
        for name, active in self.actives.items():
            m = self.members.get(name)
            out[name] = (m.state if m is not None else None, active)
        return out


@dataclass(frozen=True)
class StepRow:
    """One step of a host's walk, as `host.step_started` and its finish say."""

    step: str
    purpose: str | None
    release: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    ok: bool | None = None  # None: started, never finished (unknown)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "purpose": self.purpose,
            "release": self.release,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "ok": self.ok,
        }
        return out if self.ok is not False else {**out, "error": self.error}


@dataclass(frozen=True)
class Pass:
    """A passing verdict (`verdict.reached`): its wave, whether it closed the guard period,
    and the checks it names."""

    wave: Any  # the entry's `wave` (an int; as journaled)
    guard: bool
    checks: tuple[str, ...]


@dataclass(frozen=True)
class HostView:
    name: str
    phase: HostPhase
    expected: str | None  # the release the journal says it should serve
    active: str | None  # what it runs (its driver's last report, or the journal since)
    lb_state: LbState | None  # in the pool or not (None: not in the balancer at all)
    step: str | None = None  # the step in flight or failed, if any
    reached: str | None = None  # the release its last `host.switched` put it on
    steps: tuple[StepRow, ...] = ()


@dataclass(frozen=True)
class FleetView:
    hosts: Mapping[str, HostView]
    release: str | None = None
    passed_waves: frozenset[int] = frozenset()
    reverting: bool = False  # the immune response (or a failed verdict) began
    revert_reason: str | None = None
    last_verdict: Mapping[str, Any] = field(default_factory=dict)  # the last verdict.reached/failed
    first_canary_at: dt.datetime | None = None  # the deployment's first, resumes included
    began_at: dt.datetime | None = None
    failed: frozenset[str] = frozenset()
    concluded: Mapping[str, Any] = field(default_factory=dict)  # the last `deployment.<outcome>`
    waves: tuple[tuple[str, ...], ...] = ()  # the plan, as the run's last start journaled it
    impact: Mapping[str, Any] | None = None  # `impact.measured`
    moments: tuple[tuple[dt.datetime, str, Mapping[str, Any]], ...] = ()  # impact's boundaries
    passes: tuple[Pass, ...] = ()  # every passing verdict, in order
    stopped: bool = False  # a signal stopped the run at some point (`deployment.stopping`)
    resumes: int = 0  # how often `resume` took it over (`deployment.resumed`)
    disagreements: tuple[str, ...] = ()

    @property
    def out(self) -> frozenset[str]:
        """Hosts out of the pool: the capacity in use."""
        return frozenset(n for n, h in self.hosts.items() if h.lb_state is not LbState.SERVING)

    @property
    def canary(self) -> frozenset[str]:
        """In-pool hosts on the run's release whose walk did not fail."""
        return frozenset(
            n
            for n, h in self.hosts.items()
            if h.lb_state is LbState.SERVING and h.active == self.release and n not in self.failed
        )

    @property
    def baseline(self) -> frozenset[str]:
        """In-pool hosts on another release whose walk did not fail."""
        return frozenset(
            n
            for n, h in self.hosts.items()
            if h.lb_state is LbState.SERVING
            and h.active not in (None, self.release)
            and n not in self.failed
        )


@dataclass
class _Host:
    expected: str | None
    active: str | None = None
    lb_state: LbState | None = LbState.SERVING
    last: JournalEntry | None = None  # its last step entry since it last switched
    reached: str | None = None
    steps: list[StepRow] = field(default_factory=list)
    open: dict[str, int] = field(default_factory=dict)  # step -> its row, while in flight


@dataclass
class FleetState:
    """The fold behind `derive`, applied one entry (or observation) at a time. `out`,
    `canary`, `baseline` and `failed` are kept as sets as each entry is applied (read them,
    never change them); `view()` is the frozen `FleetView` (O(hosts and their steps));
    `bakes` is the analysis's fold of the same entries (`BakeLedger`)."""

    hosts: Sequence[HostRef]
    release: str | None = None
    fallbacks: Mapping[str, str] | None = None
    passed_waves: set[int] = field(default_factory=set)
    reverting: bool = False
    revert_reason: str | None = None
    last_verdict: Mapping[str, Any] = field(default_factory=dict)
    first_canary_at: dt.datetime | None = None
    began_at: dt.datetime | None = None
    failed: set[str] = field(default_factory=set)
    concluded: Mapping[str, Any] = field(default_factory=dict)
    waves: tuple[tuple[str, ...], ...] = ()
    impact: Mapping[str, Any] | None = None
    moments: list[tuple[dt.datetime, str, Mapping[str, Any]]] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)
    stopped: bool = False
    resumes: int = 0
    out: set[str] = field(default_factory=set)
    canary: set[str] = field(default_factory=set)
    baseline: set[str] = field(default_factory=set)
    bakes: BakeLedger = field(default_factory=BakeLedger)

    def __post_init__(self) -> None:
        fb = self.fallbacks or {}
        self._hosts = {h.name: _Host(expected=fb.get(h.name)) for h in self.hosts}

    def apply(self, e: JournalEntry) -> None:
        """Fold one journal entry (see docs/state-machine.md for what each kind says)."""
        kind, data = e.kind, e.data
        if kind in ("deployment.started", "deployment.resumed"):
            if kind == "deployment.started":  # a resume keeps both: the deployment's own
                self.began_at, self.first_canary_at = e.at, None
            else:
                self.resumes += 1
            if "waves" in data:
                self.waves = tuple(tuple(w) for w in data["waves"])
        elif kind.startswith("deployment.") and "outcome" in data:
            self.concluded = data
        if "observed" in data:
            self.observe(decode(data["observed"]))
        if kind in BOUNDARY_KINDS:
            self.moments.append((e.at, kind, data))
        if kind.startswith("bake."):
            self.bakes.apply(kind, data)
        elif kind == "wave.passed":
            self.passed_waves.add(int(data.get("wave", -1)))
        elif kind in ("verdict.reached", "verdict.failed"):
            verdict = data.get("verdict") or {}
            self.last_verdict = verdict or self.last_verdict
            if kind == "verdict.reached" and verdict.get("outcome") == "pass":
                checks = tuple(str(c.get("name")) for c in verdict.get("checks") or [])
                self.passes.append(Pass(data.get("wave"), bool(data.get("guard")), checks))
        elif kind in ("deployment.stopping", "deployment.interrupted"):
            self.stopped = True
        elif kind == "impact.measured":
            self.impact = data
        if kind in ("immune.started", "immune.waiting", "verdict.failed"):
            # `immune.waiting`: the revert began but could not read the fleet yet
            self.reverting = True
            self.revert_reason = str(data.get("reason") or self.last_verdict.get("reason") or "")
        h = self._hosts.get(e.host or "")
        if h is None or e.host is None:
            return
        if kind in ("host.step_started", "host.step_finished", "host.step_failed"):
            h.last = e
            if kind == "host.step_started" and e.step:
                h.open[e.step] = len(h.steps)
                h.steps.append(StepRow(e.step, data.get("purpose"), data.get("release"), e.at))
            elif e.step in h.open:
                i, ok = h.open.pop(e.step), kind == "host.step_finished"
                error = None if ok else data.get("error")
                r = h.steps[i]  # not dataclasses.replace: 70,000 of these at 10,000 hosts
                h.steps[i] = StepRow(r.step, r.purpose, r.release, r.started_at, e.at, ok, error)
            if kind == "host.step_failed":
                self.failed.add(e.host)
            elif kind == "host.step_started" and e.step == "drain":
                h.lb_state = LbState.DRAINING
            elif kind == "host.step_finished" and e.step in ("stop", "start"):
                h.active = data.get("release") if e.step == "start" else None
        elif kind == "host.switched":
            h.expected = h.active = h.reached = data.get("release")
            h.lb_state, h.last = LbState.SERVING, None
            self.failed.discard(e.host)
            if h.active == self.release and data.get("purpose") == "deploy":
                at = self.first_canary_at
                self.first_canary_at = e.at if at is None else min(at, e.at)
        self._place(e.host, h)

    def reached(self, name: str) -> str | None:
        """The release the last `host.switched` of host `name` put it on (None: none yet)."""
        h = self._hosts.get(name)
        return h.reached if h is not None else None

    def believed(self) -> Observed:
        """Each host's place in the pool and release as the journal says (a host no entry
        moved: the release it is expected to serve), for when the fleet cannot be read."""
        return {n: (h.lb_state, h.active or h.expected) for n, h in self._hosts.items()}

    def observe(self, seen: Observed) -> None:
        """Fold what the balancer and the drivers report now."""
        for name, (lb_state, active) in seen.items():
            h = self._hosts.get(name)
            if h is not None:
                h.lb_state, h.active = lb_state, active
                self._place(name, h)

    def _place(self, name: str, h: _Host) -> None:
        serving = h.lb_state is LbState.SERVING and name not in self.failed
        for group, inside in (
            (self.out, h.lb_state is not LbState.SERVING),
            (self.canary, serving and h.active == self.release),
            (self.baseline, serving and h.active not in (None, self.release)),
        ):
            if inside:
                group.add(name)
            else:
                group.discard(name)

    def view(self) -> FleetView:
        hosts: dict[str, HostView] = {}
        disagreements: list[str] = []
        for name, h in self._hosts.items():
            step = h.last
            if step is not None and step.kind == "host.step_failed":
                phase = HostPhase.FAILED
            elif step is not None and step.step in _IN_STEP:
                phase = _IN_STEP[step.step]
            else:
                phase = HostPhase.SERVING if h.lb_state is LbState.SERVING else HostPhase.OUT
            hosts[name] = HostView(
                name,
                phase,
                h.expected,
                h.active,
                h.lb_state,
                step=step.step if step is not None else None,
                reached=h.reached,
                steps=tuple(h.steps),
            )
            if h.expected and h.active != h.expected:
                disagreements.append(
                    f"{name}: journal says {h.expected}, host runs {h.active or 'nothing'}"
                )
            if h.lb_state is not LbState.SERVING:
                state = str(h.lb_state) if h.lb_state is not None else "out"
                disagreements.append(f"{name}: balancer reports {state}, expected serving")
        facts = {f.name: getattr(self, f.name) for f in fields(FleetView)[1:-1]}
        facts = {
            k: frozenset(v) if isinstance(v, set) else tuple(v) if isinstance(v, list) else v
            for k, v in facts.items()
        }
        return FleetView(hosts, disagreements=tuple(disagreements), **facts)


def derive(
    entries: Sequence[JournalEntry],
    seen: Sighting | None,
    hosts: Sequence[HostRef],
    *,
    release: str | None = None,
    fallbacks: Mapping[str, str] | None = None,
) -> FleetView:
    """See the module docstring. `fallbacks` (the record's) are what each host is expected to
    serve before the journal says it switched; `seen`, when given, is the newest word on the
    pool and on what each host runs (`status`), folded the way a run folds what it observes."""
    state = FleetState(hosts, release=release, fallbacks=fallbacks)
    for e in entries:
        state.apply(e)
    if seen is not None:
        member = {h.name: seen.members.get(h.name) for h in hosts}
        state.observe({n: (m.state if m else None, seen.actives.get(n)) for n, m in member.items()})
    return state.view()


def encode(observed: Observed) -> dict[str, list[str | None]]:
    """An observation as journal data."""
    return {n: [str(s) if s is not None else None, a] for n, (s, a) in observed.items()}


def decode(data: Mapping[str, Any]) -> dict[str, tuple[LbState | None, str | None]]:
    return {
        str(n): (LbState(s) if s is not None else None, str(a) if a is not None else None)
        for n, (s, a) in data.items()
    }


def host_rows(view: FleetView) -> list[dict[str, Any]]:
    """Per host: the last release a switch put it on and every step with its times."""
    return [
        {"name": n, "release": h.reached, "steps": [r.to_dict() for r in h.steps]}
        for n, h in view.hosts.items()
    ]
