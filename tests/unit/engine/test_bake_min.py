"""`bake.min` covers every host of a wave, the last one in included (trial 3, finding 10: a
wave passed 10 s after its last host joined, with `bake.min: 20s`). In-memory fleet, virtual
time; times read back from the journal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from immunity.engine.deployment import deploy as run_deploy
from immunity.engine.result import RunResult
from immunity.journal.base import JournalEntry
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}
CONFIG: dict[str, Any] = {
    "waves": [1, "100%"],
    "max_unavailable": 1,
    "bake": {"min": 20, "max": 300, "interval": 1, "lag": 0},
    "timeouts": {"drain": 30, "revert": 600},
    "lease_ttl": 30,
    "guard": {"duration": 0},
}


def deploy(hosts: int) -> tuple[RunResult, list[JournalEntry], Any, Any]:
    """The run's result, its journal entries, its journal record and its config."""
    clock = VirtualClock()
    fleet, _ = memory_fleet(
        hosts, clock=clock, latencies=Latencies.realistic(), releases=GOOD, config=CONFIG
    )

    async def main() -> tuple[RunResult, list[JournalEntry], Any]:
        result = await run_deploy(fleet, "v2", handle_signals=False)
        record = await fleet.journal.deployment(result.deployment_id)
        return result, list(await fleet.journal.entries(result.deployment_id)), record

    result, entries, record = clock.run(main)
    return result, entries, record, fleet.config


def kinds(entries: Sequence[JournalEntry], kind: str) -> list[JournalEntry]:
    return [e for e in entries if e.kind == kind]


def test_a_wave_passes_only_once_its_last_host_has_been_judged_bake_min() -> None:
    """Wave 2 switches h2..h6 one at a time (max_unavailable 1), the last back in the pool
    about 22 s after the first. The bake started with the wave, so by the old rule (bake.min
    from the first canary in) it passed 0.5 s after h6 came back; now at least 20 s after."""
    result, entries, record, config = deploy(hosts=6)
    assert result.outcome == "deployed", result.reason
    t0 = entries[0].at
    waves = kinds(entries, "wave.started")
    assert [w.data["hosts"] for w in waves] == [["h1"], ["h2", "h3", "h4", "h5", "h6"]]
    for wave in (1, 2):
        hosts = waves[wave - 1].data["hosts"]
        in_pool = [
            (e.at - t0).total_seconds()
            for e in entries
            if e.kind == "host.step_finished" and e.step == "enable" and e.host in hosts
        ]
        (passed,) = [
            (e.at - t0).total_seconds()
            for e in kinds(entries, "wave.passed")
            if e.data["wave"] == wave
        ]
        assert len(in_pool) == len(hosts)
        assert passed - max(in_pool) >= 20.0, (wave, in_pool, passed)  # bake.min

    # `immunity replay` re-judges the recorded looks by the same rule: it passes wave 2 no
    # sooner than bake.min after the first look that saw h6 in the canary
    from immunity.analysis import read_looks
    from immunity.report.replay import replay

    looks = [lk for lk in read_looks(entries) if lk.wave == 2]
    h6_seen = next(lk.t_s for lk in looks if "h6" in lk.canary)
    again = replay(record, entries, config)
    (wave2,) = [b for b in again["bakes"] if b["wave"] == 2]
    assert wave2["replayed"]["outcome"] == "pass"
    assert wave2["replayed"]["t_s"] >= h6_seen + 20.0, (h6_seen, wave2)
