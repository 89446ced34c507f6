"""A run ends by telling every notifier, each within its deadline; a notifier that fails or
hangs is journaled and never changes the outcome."""

from __future__ import annotations

from typing import Any

from immunity.engine.deployment import deploy
from immunity.notify.base import NOTIFY_TIMEOUT_S
from immunity.testing import MemoryNotifier, VirtualClock, memory_fleet


def test_a_failing_and_a_hung_notifier_are_journaled_and_the_run_still_deploys() -> None:
    """Three notifiers: one answers, one raises NotifyError, one never returns. The run is
    `deployed`; the one that answered got `deployment.succeeded` with the result's keys; the
    journal says `notify.sent` for it and `notify.failed` for the others (the hung one after
    NOTIFY_TIMEOUT_S of virtual time, as a TimeoutError)."""
    clock = VirtualClock()
    fleet, _ = memory_fleet(3, clock=clock, config={"guard": {"duration": 0}})
    ok = MemoryNotifier("ok")
    bad = MemoryNotifier("bad", how="refuses", refusal="the webhook answered 500")
    hung = MemoryNotifier("hung", how="hangs")
    fleet.notifiers.extend([ok, bad, hung])

    async def main() -> tuple[Any, list[Any]]:
        result = await deploy(fleet, "v2", handle_signals=False)
        entries = await fleet.journal.entries(result.deployment_id)
        return result, [e for e in entries if e.kind.startswith("notify.")]

    result, told = clock.run(main)
    assert "deployed" == result.outcome
    [event] = ok.delivered
    assert [event] == bad.sent == hung.sent  # each was sent the one final outcome
    assert [] == bad.delivered == hung.delivered
    assert ("deployment.succeeded", "deployed") == (event.kind, event.data["outcome"])
    assert {"release": "v2", "needs_human": []} == {
        k: event.data[k] for k in ("release", "needs_human")
    }
    said = {(e.kind, e.data["notifier"]): e.data.get("error") for e in told}
    assert {
        ("notify.sent", "ok"): None,
        ("notify.failed", "bad"): "bad: the webhook answered 500",
        ("notify.failed", "hung"): "TimeoutError",
    } == said
    at = {e.data["notifier"]: e.at for e in told}
    assert NOTIFY_TIMEOUT_S <= (at["hung"] - at["ok"]).total_seconds() < NOTIFY_TIMEOUT_S + 0.5
