"""A run ends by telling every notifier, each within its deadline; a notifier that fails or
hangs is journaled and never changes the outcome."""

from __future__ import annotations

from typing import Any

import anyio

from immunity.domain import Event
from immunity.engine.deployment import deploy
from immunity.errors import NotifyError
from immunity.notify.base import NOTIFY_TIMEOUT_S
from immunity.testing import VirtualClock, memory_fleet


class Receiver:
    def __init__(self, name: str, how: str) -> None:
        self.name, self.how = name, how
        self.got: list[Event] = []

    def wants(self, event: Event) -> bool:
        return event.kind.startswith("deployment.")

    async def notify(self, event: Event) -> None:
        if self.how == "fails":
            raise NotifyError("the webhook answered 500", adapter="webhook")
        if self.how == "hangs":
            await anyio.sleep_forever()
        self.got.append(event)

    async def aclose(self) -> None:
        pass


def test_a_failing_and_a_hung_notifier_are_journaled_and_the_run_still_deploys() -> None:
    """Three notifiers: one answers, one raises NotifyError, one never returns. The run is
    `deployed`; the one that answered got `deployment.succeeded` with the result's keys; the
    journal says `notify.sent` for it and `notify.failed` for the others (the hung one after
    NOTIFY_TIMEOUT_S of virtual time, as a TimeoutError)."""
    clock = VirtualClock()
    fleet, _ = memory_fleet(3, clock=clock, config={"guard": {"duration": 0}})
    ok, bad, hung = Receiver("ok", "answers"), Receiver("bad", "fails"), Receiver("hung", "hangs")
    fleet.notifiers.extend([ok, bad, hung])

    async def main() -> tuple[Any, list[Any]]:
        result = await deploy(fleet, "v2", handle_signals=False)
        entries = await fleet.journal.entries(result.deployment_id)
        return result, [e for e in entries if e.kind.startswith("notify.")]

    result, told = clock.run(main)
    assert "deployed" == result.outcome
    [event] = ok.got
    assert ("deployment.succeeded", "deployed") == (event.kind, event.data["outcome"])
    assert {"release": "v2", "needs_human": []} == {
        k: event.data[k] for k in ("release", "needs_human")
    }
    said = {(e.kind, e.data["notifier"]): e.data.get("error") for e in told}
    assert {
        ("notify.sent", "ok"): None,
        ("notify.failed", "bad"): "the webhook answered 500",
        ("notify.failed", "hung"): "TimeoutError",
    } == said
    at = {e.data["notifier"]: e.at for e in told}
    assert NOTIFY_TIMEOUT_S <= (at["hung"] - at["ok"]).total_seconds() < NOTIFY_TIMEOUT_S + 0.5
