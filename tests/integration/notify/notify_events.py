"""Events as the engine sends them at the end of a deployment."""

from __future__ import annotations

import datetime as dt

from immunity.domain import Event

AT = dt.datetime(2026, 5, 4, 12, 30, 15, tzinfo=dt.UTC)


def reverted(app: str = "shop", release: str = "v2") -> Event:
    """A rejected release: the verdict's reason, timings and each host's fallback."""
    return Event(
        kind="deployment.reverted",
        app=app,
        deployment_id="d-20260504-0001",
        release=release,
        message="canary 5xx rate 5.1% vs baseline 0.2%",
        at=AT,
        data={
            "outcome": "reverted",
            "release": release,
            "detected_after_s": 6.4,
            "reverted_after_s": 9.1,
            "duration_s": 31.0,
            "needs_human": [],
            "fallbacks": {"web1": "v1", "web2": "v1", "web3": "v1"},
            "verdict": {
                "outcome": "fail",
                "reason": "canary 5xx rate 5.1% (51/1000) vs baseline 0.2% (4/2000), p < 0.001",
                "checks": [],
            },
        },
    )


def succeeded(app: str = "shop", release: str = "v3") -> Event:
    return Event(
        kind="deployment.succeeded",
        app=app,
        deployment_id="d-20260504-0002",
        release=release,
        message="all 3 hosts on v3",
        at=AT + dt.timedelta(hours=1),
        data={"outcome": "deployed", "duration_s": 42.5, "fallbacks": {"web1": "v2"}},
    )
