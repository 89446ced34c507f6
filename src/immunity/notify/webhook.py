"""Generic webhook notifier: the event as JSON, signed with HMAC-SHA256.

Speaks plain HTTP: `POST <url>` with the body

    {"kind", "app", "deployment_id", "release", "message", "at", "data"}

(`at` is ISO 8601 UTC; `message` short, without the "(customers: …)" asides of checks judged
on probe traffic; `data` as the engine recorded it, reasons whole) and the headers

    Content-Type: application/json
    X-Immunity-Event: <kind>
    X-Immunity-Delivery: <uuid, the same on every retry of one event>
    X-Immunity-Timestamp: <unix seconds of this attempt>
    X-Immunity-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>

The signature is sent only when `secret` is set (it should be). A receiver recomputes the
HMAC over the raw body bytes, compares in constant time, and rejects timestamps more than
5 minutes away from its clock (replay window) and delivery ids it has already seen; see
`docs/adapters/notify.md`. 429, 5xx and connection errors are retried a bounded number of
times with backoff, re-signed with a fresh timestamp; any 2xx is success. Redirects are not
followed. The URL and the secret never appear in errors or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping

from pydantic import Field, SecretStr

from immunity.domain import Event
from immunity.notify.common import HttpNotifier, UrlNotifierSettings, dumps, event_dict

SIGNATURE_HEADER = "X-Immunity-Signature"
TIMESTAMP_HEADER = "X-Immunity-Timestamp"


class WebhookSettings(UrlNotifierSettings):
    """The `kind: webhook` block of immunity.yaml."""

    url: SecretStr
    """The receiver's URL (it may carry a token), a secret: keep it out of the file:
    `url: ${IMMUNITY_WEBHOOK_URL}`."""

    secret: SecretStr | None = None
    """HMAC key shared with the receiver: `secret: ${IMMUNITY_WEBHOOK_SECRET}`."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (e.g. an Authorization for the receiver)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Immunity-Signature` value for one attempt."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Receiver side: True when `signature` is ours and `timestamp` is within the replay window."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier(HttpNotifier):
    """POSTs each event as signed JSON to any HTTP receiver."""

    kind = "webhook"
    what = "the webhook receiver"
    Settings = WebhookSettings
    settings: WebhookSettings

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError."""
        body = dumps(event_dict(event))
        delivery = str(uuid.uuid4())
        secret = self.settings.secret.get_secret_value() if self.settings.secret else None

        def headers() -> Mapping[str, str]:
            out = {
                **self.settings.headers,
                "X-Immunity-Event": event.kind,
                "X-Immunity-Delivery": delivery,
            }
            if secret is not None:
                ts = str(int(time.time()))
                out[TIMESTAMP_HEADER] = ts
                out[SIGNATURE_HEADER] = sign(secret.encode(), ts, body)
            return out

        await self._post(body, headers, secrets=[secret or "", *self.settings.headers.values()])
