"""Microsoft Teams notifier: an Adaptive Card per event through a *Workflows* webhook.

Speaks the Power Automate "When a Teams webhook request is received" trigger
(`https://...api.powerplatform.com/...` or `...logic.azure.com/...` URLs): `POST` of
`{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
"contentUrl": null, "content": <AdaptiveCard 1.4>}]}`; the flow answers `202 Accepted`.
The card has a coloured title (Good / Warning / Attention), the verdict's reason and a
FactSet (release, previous release, hosts, timings, deployment id). The retired Office 365
connector format (MessageCard) is not spoken.

The webhook URL is a secret (its query string carries the signature `sig=`): keep it in the
environment (`url: ${TEAMS_WEBHOOK_URL}`); it never appears in errors or logs.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr, field_validator

from immunity.domain import Event
from immunity.notify.common import (
    HttpNotifier,
    Severity,
    Summary,
    UrlNotifierSettings,
    dumps,
    summarize,
)

_COLOR = {
    Severity.GOOD: "Good",
    Severity.WARNING: "Warning",
    Severity.DANGER: "Attention",
    Severity.INFO: "Accent",
}


class TeamsSettings(UrlNotifierSettings):
    """The `kind: teams` block of immunity.yaml."""

    url: SecretStr
    """The Teams workflow (Power Automate) webhook URL, a secret: keep it out of the file:
    `url: ${TEAMS_WEBHOOK_URL}`."""

    link: str | None = None
    """Optional button target (a dashboard, the CI run): an `Action.OpenUrl` on the card."""

    @field_validator("link")
    @classmethod
    def _link(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v


def adaptive_card(
    event: Event, summary: Summary | None = None, link: str | None = None
) -> dict[str, Any]:
    """The Adaptive Card 1.4 for `event` (without the message envelope)."""
    s = summary or summarize(event)
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": s.title,
                "size": "Large",
                "weight": "Bolder",
                "color": _COLOR[s.severity],
                "wrap": True,
            },
            {"type": "TextBlock", "text": s.reason, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in s.facts]},
            {
                "type": "TextBlock",
                "text": f"immunity \u00b7 {event.kind} \u00b7 "
                f"{event.at.strftime('%Y-%m-%d %H:%M:%S UTC')}",
                "isSubtle": True,
                "size": "Small",
                "wrap": True,
            },
        ],
    }
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open", "url": link}]
    return card


def teams_payload(event: Event, link: str | None = None) -> dict[str, Any]:
    """The Workflows webhook message carrying the card."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": adaptive_card(event, link=link),
            }
        ],
    }


class TeamsNotifier(HttpNotifier):
    """Posts an Adaptive Card per event to a Teams Workflows webhook."""

    kind = "teams"
    what = "the Teams workflow webhook"
    Settings = TeamsSettings
    settings: TeamsSettings

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError."""
        await self._post(dumps(teams_payload(event, self.settings.link)))
