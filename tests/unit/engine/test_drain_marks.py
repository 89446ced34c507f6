"""Why the drain's leaving marks are not read from the run's fold (docs/state-machine.md):
the last two serving hosts, both admitted, both drain steps journaled, must not wait on each
other. Read from the fold (each out from its journaled drain start) both waited until
`timeouts.drain` and the release was reverted ("h1: drain did not finish within 60s")."""

from __future__ import annotations

from immunity.domain import Event, LbState
from immunity.engine.deployment import deploy
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


def test_the_last_two_serving_hosts_draining_together_do_not_wait_on_each_other() -> None:
    """4 hosts, max_unavailable 2; h3 and h4 go DOWN as the run starts (after preflight):
    h1 and h2 are admitted together and are the only ones serving. One drains, the other
    waits for it to come back; every host ends on v2."""
    clock = VirtualClock()
    fleet, world = memory_fleet(
        4,
        clock=clock,
        releases=GOOD,
        latencies=Latencies.realistic(),
        config={
            "waves": ["100%"],
            "max_unavailable": 2,
            "max_failed_hosts": 0,
            "guard": {"duration": 0},
            "bake": {"min": 5, "max": 60, "interval": 1, "lag": 0},
        },
    )
    serving: list[int] = []

    def on_event(event: Event) -> None:
        if event.kind == "deployment.started":
            for name in ("h3", "h4"):
                world.set_lb(world.hosts[name], LbState.UNHEALTHY)
        if event.kind == "host.step_finished" and event.data.get("step") == "drain":
            serving.append(sum(s.lb is LbState.SERVING for s in world.hosts.values()))

    fleet.sinks.append(on_event)

    async def main() -> tuple[str, str]:
        result = await deploy(fleet, "v2", handle_signals=False)
        return str(result.outcome), result.reason

    outcome, reason = clock.run(main)
    assert outcome == "deployed", reason
    assert {(s.active, s.lb) for s in world.hosts.values()} == {("v2", LbState.SERVING)}
    assert serving[:2] == [1, 1], serving  # h1's and h2's drains each left one serving
