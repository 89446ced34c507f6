"""Notifier settings in immunity.yaml, the events filter, and the webhook verification recipe."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from immunity.config import parse
from immunity.errors import ConfigError
from immunity.notify.common import wants
from immunity.notify.webhook import sign, verify

BASE = """\
app: shop
hosts:
  - name: h1
    port: 9001
  - name: h2
    port: 9002
balancer:
  kind: haproxy
  socket: haproxy/admin.sock
  backend: be_app
driver:
  kind: local
  root: hosts
  releases: releases
"""

NOTIFY = """\
notify:
  - kind: slack
    url: ${SLACK_URL}
  - kind: teams
    url: ${TEAMS_URL}
    events: ["deployment.reverted", "deployment.revert_incomplete"]
  - kind: webhook
    url: https://hooks.internal/immunity
    secret: ${HOOK_SECRET}
    retries: 1
  - kind: statsd
    port: 9125
  - kind: pushgateway
    url: http://pushgateway:9091
"""


def test_every_notifier_kind_loads_from_immunity_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The five kinds validate, secrets come from the environment and stay hidden in reprs."""
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.com/services/T0/B0/XYZSECRET")
    monkeypatch.setenv("TEAMS_URL", "https://prod.westeurope.logic.azure.com/wf?sig=TEAMSSIG")
    monkeypatch.setenv("HOOK_SECRET", "hmac-key")
    loaded = parse(BASE + NOTIFY, "immunity.yaml")
    kinds = [k for k, _ in loaded.notify]
    assert kinds == ["slack", "teams", "webhook", "statsd", "pushgateway"]
    slack = loaded.notify[0][1]
    assert slack.url.get_secret_value().endswith("XYZSECRET")  # type: ignore[attr-defined]
    assert "XYZSECRET" not in repr(slack)
    assert "hmac-key" not in repr(loaded.notify[2][1])
    assert loaded.notify[0][1].events == ["deployment.*"]  # type: ignore[attr-defined]


def test_a_bad_secret_url_is_rejected_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Slack URL that is not http(s) is named by field, never by value."""
    monkeypatch.setenv("SLACK_URL", "hooks.slack.com/services/T0/B0/XYZSECRET")
    monkeypatch.setenv("TEAMS_URL", "https://x")
    monkeypatch.setenv("HOOK_SECRET", "k")
    with pytest.raises(ConfigError) as info:
        parse(BASE + NOTIFY, "immunity.yaml")
    (problem,) = info.value.problems
    assert "notify[0].url" in problem and "http:// or https://" in problem
    assert "XYZSECRET" not in problem


@pytest.mark.parametrize(
    ("patterns", "kind", "expected"),
    [
        (["deployment.*"], "deployment.reverted", True),
        (["deployment.*"], "verdict.reached", False),
        (["deployment.*", "!deployment.succeeded"], "deployment.succeeded", False),
        (["deployment.*", "!deployment.succeeded"], "deployment.revert_incomplete", True),
        (["*"], "host.drained", True),
    ],
)
def test_events_patterns_select_kinds(patterns: list[str], kind: str, expected: bool) -> None:
    """Shell-style patterns select kinds; `!pattern` excludes."""
    assert wants(patterns, kind) is expected


def test_documented_verification_recipe_matches_sign() -> None:
    """The receiver recipe (HMAC over `timestamp.body`) agrees with what we send."""
    body, ts = b'{"kind":"deployment.reverted"}', "1777897815"
    mac = hmac.new(b"k", b"1777897815." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", ts, body) == f"sha256={mac}"
    assert verify(b"k", body, ts, f"sha256={mac}", now=1777897815 + 60)


def test_verify_rejects_replays_and_tampering() -> None:
    """Old timestamps, other bodies and other keys all fail verification."""
    body, ts = b"{}", "1777897815"
    good = sign(b"k", ts, body)
    assert not verify(b"k", body, ts, good, now=1777897815 + 301)
    assert not verify(b"k", b"{ }", ts, good, now=1777897815)
    assert not verify(b"other", body, ts, good, now=1777897815)
    assert not verify(b"k", body, "not-a-number", good, now=1777897815)
