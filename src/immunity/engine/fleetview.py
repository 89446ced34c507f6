"""The fleet as the journal and the fleet itself say it is: derived, never kept on the side.

    derive(entries, members, actives, ...) -> FleetView

`entries` are one run's journal entries (in order), `members` the balancer's view of each
host, `actives` each host's active release as its driver reports it. Each host gets a
`HostPhase` (the states of docs/state-machine.md) and the release the journal says it
should serve; the view holds the waves that passed, whether a revert is in progress, the
hosts whose walk failed, the cohorts and the hosts out of the pool (the capacity in use).
Where the journal and the fleet disagree, the view says so (`disagreements`). `status`,
`resume` and the rollout read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from immunity.domain import HostRef, LbState, Member
from immunity.journal.base import JournalEntry


class HostPhase(StrEnum):
    SERVING = "serving"  # in the pool, on the release the journal expects
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


@dataclass(frozen=True)
class HostView:
    name: str
    phase: HostPhase
    expected: str | None  # the release the journal says it should serve
    active: str | None  # what its driver says it runs
    lb_state: LbState | None  # what the balancer says (None: not in the pool at all)
    step: str | None = None  # the step in flight or failed, if any
    purpose: str | None = None  # deploy | revert


@dataclass(frozen=True)
class FleetView:
    hosts: Mapping[str, HostView]
    release: str | None = None
    passed_waves: frozenset[int] = frozenset()
    reverting: bool = False  # the immune response (or a failed verdict) began
    failed: frozenset[str] = frozenset()
    disagreements: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> frozenset[str]:
        """Hosts out of the pool: the capacity in use."""
        return frozenset(n for n, h in self.hosts.items() if h.lb_state is not LbState.SERVING)

    @property
    def canary(self) -> frozenset[str]:
        """In-pool hosts on the run's release."""
        return frozenset(
            n
            for n, h in self.hosts.items()
            if self.release is not None
            and h.active == self.release
            and h.lb_state is LbState.SERVING
        )

    @property
    def baseline(self) -> frozenset[str]:
        """In-pool hosts on another release."""
        return frozenset(
            n
            for n, h in self.hosts.items()
            if h.lb_state is LbState.SERVING and h.active is not None and n not in self.canary
        )


def derive(
    entries: Sequence[JournalEntry],
    members: Mapping[str, Member],
    actives: Mapping[str, str | None],
    hosts: Sequence[HostRef],
    *,
    release: str | None = None,
    fallbacks: Mapping[str, str] | None = None,
) -> FleetView:
    """See the module docstring. `fallbacks` (the record's) are what each host is expected to
    serve before the journal says it switched."""
    expected: dict[str, str | None] = {h.name: None for h in hosts}
    expected.update({k: v for k, v in (fallbacks or {}).items() if k in expected})
    last_step: dict[str, JournalEntry] = {}
    failed: set[str] = set()
    passed: set[int] = set()
    reverting = False
    for e in entries:
        if e.kind == "wave.passed":
            passed.add(int(e.data.get("wave", -1)))
        elif e.kind in ("immune.started", "verdict.failed"):
            reverting = True
        elif e.host in expected:
            if e.kind in ("host.step_started", "host.step_finished", "host.step_failed"):
                last_step[e.host] = e
                if e.kind == "host.step_failed":
                    failed.add(e.host)
            elif e.kind == "host.switched":
                expected[e.host] = e.data.get("release")
                last_step.pop(e.host, None)
                failed.discard(e.host)
    views: dict[str, HostView] = {}
    disagreements: list[str] = []
    for h in hosts:
        m = members.get(h.name)
        lb_state = m.state if m is not None else None
        active = actives.get(h.name)
        step = last_step.get(h.name)
        if step is not None and step.kind == "host.step_failed":
            phase = HostPhase.FAILED
        elif step is not None and step.step in _IN_STEP:
            phase = _IN_STEP[step.step]
        elif lb_state is LbState.SERVING:
            phase = HostPhase.SERVING
        else:
            phase = HostPhase.OUT
        views[h.name] = HostView(
            name=h.name,
            phase=phase,
            expected=expected[h.name],
            active=active,
            lb_state=lb_state,
            step=step.step if step is not None else None,
            purpose=str(step.data.get("purpose")) if step is not None else None,
        )
        want = expected[h.name]
        if want and active != want:
            disagreements.append(f"{h.name}: journal says {want}, host runs {active or 'nothing'}")
        if lb_state is not LbState.SERVING:
            state = str(lb_state) if lb_state is not None else "out"
            disagreements.append(f"{h.name}: balancer reports {state}, expected serving")
    return FleetView(
        hosts=views,
        release=release,
        passed_waves=frozenset(passed),
        reverting=reverting,
        failed=frozenset(failed),
        disagreements=tuple(disagreements),
    )
