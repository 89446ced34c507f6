"""Slack notifier: one message per event through a Slack *incoming webhook*.

Speaks the incoming-webhook API: `POST <url>` with `{"text": fallback, "blocks": [...]}`
(Block Kit: a header, the verdict's reason, a fields section with release/hosts/timings,
and a context line with the deployment id). Slack answers `200 ok`; 4xx bodies name the
problem (`invalid_payload`, `no_service`, `channel_is_archived`). 429 and 5xx are retried
with backoff (Retry-After honoured). App webhooks post to the channel chosen when the
webhook was created; channel, username and icon cannot be overridden.

The webhook URL is a secret: keep it in the environment (`url: ${SLACK_WEBHOOK_URL}`);
it never appears in errors or logs.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from immunity.domain import Event
from immunity.notify.common import HttpNotifier, Summary, UrlNotifierSettings, dumps, summarize

# Block Kit limits: header 150 chars, section text 3000, field text 2000, 10 fields.
_HEADER_MAX = 150
_TEXT_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_MAX = 10


class SlackSettings(UrlNotifierSettings):
    """The `kind: slack` block of immunity.yaml."""

    url: SecretStr
    """The Slack incoming-webhook URL, a secret: keep it out of the file:
    `url: ${SLACK_WEBHOOK_URL}`."""


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def slack_payload(event: Event, summary: Summary | None = None) -> dict[str, Any]:
    """The Block Kit message for `event`."""
    s = summary or summarize(event)
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{_mrkdwn(k)}*\n{_mrkdwn(v)}", _FIELD_MAX)}
        for k, v in s.facts
        if k != "Deployment"
    ][:_FIELDS_MAX]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"{s.icon} {s.title}", _HEADER_MAX)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_mrkdwn(s.reason), _TEXT_MAX)}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _mrkdwn(
                        f"immunity \u00b7 {event.kind} \u00b7 deployment {event.deployment_id}"
                        f" \u00b7 {event.at.strftime('%Y-%m-%d %H:%M:%S UTC')}"
                    ),
                }
            ],
        }
    )
    return {"text": _cut(_mrkdwn(f"{s.title}: {s.reason}"), _TEXT_MAX), "blocks": blocks}


class SlackNotifier(HttpNotifier):
    """Posts a Block Kit message per event to a Slack incoming webhook."""

    kind = "slack"
    what = "the Slack webhook"
    Settings = SlackSettings

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError."""
        await self._post(dumps(slack_payload(event)))
