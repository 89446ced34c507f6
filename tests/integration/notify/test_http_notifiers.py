"""Slack, Teams and generic webhook notifiers against a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import traceback

import pytest
from notify_events import reverted, succeeded
from notify_receivers import Receiver

from immunity.errors import NotifyError
from immunity.notify.slack import SlackNotifier
from immunity.notify.teams import TeamsNotifier
from immunity.notify.webhook import WebhookNotifier

pytestmark = pytest.mark.anyio

SECRET = "whsec-test-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_slack_message_carries_header_reason_release_and_hosts(receiver: Receiver) -> None:
    """Slack gets Block Kit: a header, the verdict reason, release and hosts, plus fallback text."""
    n = SlackNotifier(SlackNotifier.Settings(url=receiver.url("/slack")), base_dir=None)
    await n.notify(reverted())
    await n.aclose()
    (req,) = receiver.at("/slack")
    assert req.headers["Content-Type"] == "application/json"
    msg = json.loads(req.body)
    assert "v2 rejected: shop reverted" in msg["text"]
    header, reason, facts, context = msg["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "v2 rejected" in header["text"]["text"]
    assert "canary 5xx rate 5.1% (51/1000)" in reason["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in facts["fields"]}
    assert fields["*Release*"] == "v2"
    assert fields["*Previous release*"] == "v1"
    assert fields["*Hosts*"] == "web1, web2, web3"
    assert fields["*Detected after*"] == "6.4 s"
    assert context["type"] == "context" and "d-20260504-0001" in context["elements"][0]["text"]


async def test_teams_gets_an_adaptive_card_in_the_workflow_envelope(receiver: Receiver) -> None:
    """Teams gets `type: message` with one Adaptive Card 1.4 attachment holding the facts."""
    n = TeamsNotifier(
        TeamsNotifier.Settings(url=receiver.url("/teams"), link="https://ci.example/run/7"),
        base_dir=None,
    )
    await n.notify(reverted())
    await n.aclose()
    (req,) = receiver.at("/teams")
    msg = json.loads(req.body)
    assert msg["type"] == "message"
    (att,) = msg["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, reason, factset, _ = card["body"]
    assert title["color"] == "Warning" and "v2 rejected" in title["text"]
    assert reason["text"].startswith("canary 5xx rate 5.1%")
    facts = {f["title"]: f["value"] for f in factset["facts"]}
    assert facts["Release"] == "v2" and facts["Hosts"] == "web1, web2, web3"
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open", "url": "https://ci.example/run/7"}
    ]


async def test_webhook_body_is_the_event_and_the_signature_verifies(receiver: Receiver) -> None:
    """The receiver can recompute HMAC-SHA256(secret, timestamp.body) from the raw body."""
    n = WebhookNotifier(
        WebhookNotifier.Settings(url=receiver.url("/hook"), secret=SECRET), base_dir=None
    )
    await n.notify(reverted())
    await n.aclose()
    (req,) = receiver.at("/hook")
    ts = req.headers["X-Immunity-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{ts}.".encode() + req.body, hashlib.sha256)
    assert req.headers["X-Immunity-Signature"] == "sha256=" + expected.hexdigest()
    assert abs(time.time() - int(ts)) < 10
    assert req.headers["X-Immunity-Event"] == "deployment.reverted"
    body = json.loads(req.body)
    assert sorted(body) == ["app", "at", "data", "deployment_id", "kind", "message", "release"]
    assert (body["kind"], body["app"], body["release"]) == ("deployment.reverted", "shop", "v2")
    assert body["at"] == "2026-05-04T12:30:15+00:00"
    assert body["data"]["detected_after_s"] == 6.4


async def test_webhook_retries_5xx_with_one_delivery_id_and_fresh_signatures(
    receiver: Receiver,
) -> None:
    """Two 503s then 200: three attempts, same delivery id, each validly signed."""
    receiver.statuses["/hook"] = [503, 503, 200]
    n = WebhookNotifier(
        WebhookNotifier.Settings(url=receiver.url("/hook"), secret=SECRET), base_dir=None
    )
    await n.notify(succeeded())
    await n.aclose()
    attempts = receiver.at("/hook")
    assert len(attempts) == 3
    assert len({a.headers["X-Immunity-Delivery"] for a in attempts}) == 1
    for a in attempts:
        ts = a.headers["X-Immunity-Timestamp"]
        mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + a.body, hashlib.sha256).hexdigest()
        assert a.headers["X-Immunity-Signature"] == f"sha256={mac}"


async def test_failing_receiver_is_a_notify_error_without_url_or_secret(
    receiver: Receiver,
) -> None:
    """A receiver answering 500 gives up after the bounded retries; the error hides secrets."""
    receiver.statuses["/hook/T0K3N"] = [500]
    url = receiver.url("/hook/T0K3N")
    n = WebhookNotifier(WebhookNotifier.Settings(url=url, secret=SECRET, retries=1), base_dir=None)
    with pytest.raises(NotifyError) as info:
        await n.notify(reverted())
    await n.aclose()
    assert len(receiver.at("/hook/T0K3N")) == 2
    assert "HTTP 500" in info.value.message
    shown = json.dumps(info.value.to_dict()) + "".join(traceback.format_exception(info.value))
    for secret in (url, "T0K3N", SECRET):
        assert secret not in shown


async def test_slack_4xx_is_not_retried_and_shows_slacks_reason(receiver: Receiver) -> None:
    """Slack's `invalid_payload` answer is reported once, without the webhook URL."""
    receiver.statuses["/services/T/B/X"] = [400]
    receiver.bodies[400] = "invalid_payload"
    url = receiver.url("/services/T/B/X")
    n = SlackNotifier(SlackNotifier.Settings(url=url), base_dir=None)
    with pytest.raises(NotifyError) as info:
        await n.notify(reverted())
    await n.aclose()
    assert len(receiver.at("/services/T/B/X")) == 1
    assert "invalid_payload" in info.value.message
    assert "/services/T/B/X" not in str(info.value.to_dict())


async def test_unreachable_receiver_is_a_notify_error_without_url() -> None:
    """Nothing listening: NotifyError after the retries, naming neither host path nor URL."""
    url = f"http://127.0.0.1:{free_port()}/workflows/abc?sig=SIGNATURE"
    n = TeamsNotifier(TeamsNotifier.Settings(url=url, retries=1), base_dir=None)
    with pytest.raises(NotifyError) as info:
        await n.notify(reverted())
    await n.aclose()
    assert "cannot reach the Teams workflow webhook" in info.value.message
    shown = str(info.value.to_dict()) + "".join(traceback.format_exception(info.value))
    assert "SIGNATURE" not in shown and "/workflows/abc" not in shown


async def test_events_filter_selects_what_is_sent(receiver: Receiver) -> None:
    """With `events: [deployment.reverted]`, a success is not wanted and a revert is."""
    n = SlackNotifier(
        SlackNotifier.Settings(url=receiver.url("/s"), events=["deployment.reverted"]),
        base_dir=None,
    )
    assert n.wants(reverted())
    assert not n.wants(succeeded())
    await n.aclose()


async def test_a_failed_notification_is_one_event_naming_the_notifier_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Trial 4 #10: a receiver that is down was printed twice, a logging line and then the
    event `slack: slack: cannot reach ...`; now one journaled event, the name once, and a
    log line only when the journal cannot take the event either."""
    from immunity.errors import JournalError
    from immunity.notify.base import notify_all

    url = f"http://127.0.0.1:{free_port()}/services/T/B/X"
    n = SlackNotifier(SlackNotifier.Settings(url=url, retries=1), base_dir=None)
    said: list[tuple[str, str]] = []

    async def record(kind: str, message: str, **data: object) -> None:
        said.append((kind, message))

    caplog.set_level("WARNING")
    await notify_all([n], reverted(), record)
    assert [(k, m.split(" (")[0]) for k, m in said] == [
        ("notify.failed", "slack: cannot reach the Slack webhook")
    ], said
    assert not caplog.records, caplog.text

    async def broken(kind: str, message: str, **data: object) -> None:
        raise JournalError("disk full")

    await notify_all([n], reverted(), broken)
    assert ["notifier slack failed: slack: cannot reach the Slack webhook"] == [
        r.getMessage().split(" (")[0] for r in caplog.records
    ], caplog.text
    await n.aclose()
