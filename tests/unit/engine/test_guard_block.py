"""The guard block after the last wave, as `deploy`, `show` and `--json` print it: each check's
outcome under a passing guard, and a heading that names the holdback (trial 3, finding 9).
In-memory fleet, virtual time; read back from the journal the way `show` reads it."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from immunity.cli.show import print_waves
from immunity.engine.deployment import deploy
from immunity.report import load
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}
CONFIG: dict[str, Any] = {
    "waves": [1, "100%"],
    "max_unavailable": 2,
    "bake": {"min": 20, "max": 300, "interval": 1, "lag": 0},
    "timeouts": {"drain": 30, "revert": 600},
    "lease_ttl": 30,
    "guard": {"duration": 30},
}


def run(config: dict[str, Any]) -> dict[str, Any]:
    clock = VirtualClock()
    fleet, _ = memory_fleet(
        4, clock=clock, latencies=Latencies.realistic(), releases=GOOD, config=config
    )

    async def main() -> dict[str, Any]:
        result = await deploy(fleet, "v2", handle_signals=False)
        assert result.outcome == "deployed", result.reason
        return await load(fleet.journal, result.deployment_id)

    return clock.run(main)


def shown(data: dict[str, Any]) -> str:
    buf = io.StringIO()
    print_waves(Console(file=buf, width=400, color_system=None), data)
    return buf.getvalue()


def test_the_guard_s_checks_pass_as_watched_and_its_heading_names_the_holdback() -> None:
    data = run(CONFIG)
    (guard,) = [v for v in data["verdicts"] if v["guard"]]
    assert guard["outcome"] == "pass"
    assert guard["checks"] and all(c["outcome"] == "pass" for c in guard["checks"]), guard
    assert all(c["reason"].startswith("watched 30 s, no regression found") for c in guard["checks"])
    text = shown(data)
    assert "guard (after the last wave: every host on the release but h4, held back on the old " \
        "release)  pass" in text, text  # fmt: skip
    assert "every host on the release, after" not in text
    assert "continue" not in text.split("guard (", 1)[1]


def test_without_a_holdback_the_guard_watches_every_host_on_the_release() -> None:
    data = run({**CONFIG, "guard": {"duration": 30, "holdback": False}})
    assert "guard (every host on the release, after the last wave)  pass" in shown(data)
