"""StatsD over a real UDP socket and Pushgateway pushes to a fake Pushgateway on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from notify_events import AT, reverted, succeeded
from notify_receivers import Receiver
from prometheus_client.parser import text_string_to_metric_families

from immunity.errors import NotifyError
from immunity.notify.pushgateway import PushgatewayNotifier
from immunity.notify.statsd import StatsdNotifier

pytestmark = pytest.mark.anyio


def received(sock: socket.socket, n: int) -> list[str]:
    return [sock.recv(2048).decode() for _ in range(n)]


async def test_statsd_counts_the_outcome_and_times_it(udp_socket: socket.socket) -> None:
    """A revert arrives as a tagged counter plus one millisecond timer per `*_s` timing."""
    port = udp_socket.getsockname()[1]
    n = StatsdNotifier(StatsdNotifier.Settings(port=port, tags={"env": "prod"}), base_dir=None)
    await n.notify(reverted())
    await n.aclose()
    lines = received(udp_socket, 4)
    tags = "|#env:prod,app:shop,release:v2"
    assert lines == [
        f"immunity.deployment.reverted:1|c{tags}",
        f"immunity.deployment.detected_after:6400|ms{tags}",
        f"immunity.deployment.duration:31000|ms{tags}",
        f"immunity.deployment.reverted_after:9100|ms{tags}",
    ]


async def test_plain_statsd_puts_the_app_in_the_name(udp_socket: socket.socket) -> None:
    """Without DogStatsD tags the app becomes part of the metric name."""
    port = udp_socket.getsockname()[1]
    n = StatsdNotifier(
        StatsdNotifier.Settings(port=port, dogstatsd_tags=False, prefix="deploys"), base_dir=None
    )
    await n.notify(succeeded(app="shop"))
    assert received(udp_socket, 2) == [
        "deploys.shop.deployment.succeeded:1|c",
        "deploys.shop.deployment.duration:42500|ms",
    ]


async def test_statsd_unknown_host_is_a_notify_error() -> None:
    """An agent host that does not resolve is reported, not silently dropped."""
    n = StatsdNotifier(StatsdNotifier.Settings(host="no-such-host.invalid"), base_dir=None)
    with pytest.raises(NotifyError, match="cannot send to StatsD"):
        await n.notify(reverted())


def pushed(receiver: Receiver) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The fake Pushgateway's view of group job=immunity, app=shop: sample -> labels -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(receiver._exposition()):
        for s in fam.samples:
            if s.labels.get("app") == "shop" and s.labels.get("job") == "immunity":
                labels = tuple(
                    sorted((k, v) for k, v in s.labels.items() if k not in ("job", "app"))
                )
                out.setdefault(s.name, {})[labels] = s.value
    return out


async def test_pushgateway_receives_counters_and_last_outcome(receiver: Receiver) -> None:
    """A revert POSTs to /metrics/job/immunity/app/shop: failure counted, timestamps set."""
    n = PushgatewayNotifier(PushgatewayNotifier.Settings(url=receiver.url("")), base_dir=None)
    await n.notify(reverted())
    (push,) = [s for s in receiver.seen if s.method in ("POST", "PUT")]
    assert (push.method, push.path) == ("POST", "/metrics/job/immunity/app/shop")
    assert push.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    view = pushed(receiver)
    assert view["immunity_deployments_total"][()] == 1
    assert view["immunity_deployment_failures_total"][()] == 1
    assert view["immunity_deployment_last_outcome"] == {
        (("outcome", "reverted"), ("release", "v2")): 1
    }
    assert view["immunity_deployment_last_failure_timestamp_seconds"][()] == AT.timestamp()
    assert view["immunity_deployment_detected_after_seconds"][()] == 6.4
    assert "immunity_deployment_last_success_timestamp_seconds" not in view


async def test_pushgateway_counters_keep_counting_across_pushes(receiver: Receiver) -> None:
    """A later success adds to the totals and keeps the last failure's timestamp."""
    n = PushgatewayNotifier(PushgatewayNotifier.Settings(url=receiver.url("")), base_dir=None)
    await n.notify(reverted())
    await n.notify(succeeded())
    view = pushed(receiver)
    assert view["immunity_deployments_total"][()] == 2
    assert view["immunity_deployment_failures_total"][()] == 1
    assert view["immunity_deployment_last_failure_timestamp_seconds"][()] == AT.timestamp()
    assert view["immunity_deployment_last_success_timestamp_seconds"][()] > AT.timestamp()
    assert list(view["immunity_deployment_last_outcome"]) == [
        (("outcome", "succeeded"), ("release", "v3"))
    ]


async def test_pushgateway_refusing_the_push_is_a_notify_error(receiver: Receiver) -> None:
    """A 500 from the push endpoint is a NotifyError naming the status, not the URL."""
    receiver.statuses["/metrics/"] = [500]
    n = PushgatewayNotifier(
        PushgatewayNotifier.Settings(url=receiver.url(""), username="u", password="pw-secret"),
        base_dir=None,
    )
    with pytest.raises(NotifyError) as info:
        await n.notify(reverted())
    assert "HTTP 500" in info.value.message
    assert str(receiver.port) not in info.value.message
    assert "pw-secret" not in str(info.value.to_dict())
    (push,) = [s for s in receiver.seen if s.method == "POST"]
    assert push.headers["Authorization"].startswith("Basic ")
