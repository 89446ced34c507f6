"""StatsD notifier: deployment outcomes as counters and timers over UDP.

Speaks the StatsD line protocol, one datagram per line, with DogStatsD tags by default:

    immunity.deployment.reverted:1|c|#app:shop,release:v2
    immunity.deployment.detected_after:6400|ms|#app:shop,release:v2
    immunity.deployment.reverted_after:9100|ms|#app:shop,release:v2
    immunity.deployment.duration:31000|ms|#app:shop,release:v2

Every event counts 1 under `<prefix>.<kind>`; every numeric `*_s` entry of the event's
data becomes a timer in milliseconds named without the `_s`. With `dogstatsd_tags: false`
(plain StatsD, Graphite) there are no tags and the app goes into the name instead:
`immunity.shop.deployment.reverted:1|c`.

UDP is fire-and-forget by nature: a send that the kernel accepts counts as sent; a missing
agent is not detected (resolution and local socket errors are, as NotifyError).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import anyio
from pydantic import Field

from immunity.domain import Event
from immunity.errors import NotifyError
from immunity.notify.common import NotifierSettings, timings, wants

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
_TAG_BAD = re.compile(r"[|,#\s]")


class StatsdSettings(NotifierSettings):
    """The `kind: statsd` block of immunity.yaml."""

    host: str = "127.0.0.1"
    """StatsD server address (UDP)."""
    port: int = Field(default=8125, ge=1, le=65535)
    """StatsD server port."""
    prefix: str = Field(default="immunity", pattern=r"^[A-Za-z0-9_.\-]*$")
    """Prefix of every metric name."""
    dogstatsd_tags: bool = True
    """Send `|#app:...,release:...` tags (DogStatsD, Telegraf, statsd_exporter)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra constant tags, e.g. `{env: prod}` (only with dogstatsd_tags)."""


def _name(*parts: str) -> str:
    return ".".join(_NAME_BAD.sub("_", p) for p in parts if p)


def statsd_lines(event: Event, settings: StatsdSettings) -> list[str]:
    """The lines for `event`."""
    tag_suffix = ""
    base = settings.prefix
    if settings.dogstatsd_tags:
        tags = {**settings.tags, "app": event.app, "release": event.release}
        tag_suffix = "|#" + ",".join(
            f"{_TAG_BAD.sub('_', k)}:{_TAG_BAD.sub('_', v)}" for k, v in tags.items()
        )
    else:
        base = _name(settings.prefix, event.app)
    lines = [f"{_name(base, event.kind)}:1|c{tag_suffix}"]
    noun = event.kind.split(".", 1)[0]
    for key, seconds in sorted(timings(event.data).items()):
        if seconds >= 0:
            lines.append(f"{_name(base, noun, key)}:{round(seconds * 1000)}|ms{tag_suffix}")
    return lines


class StatsdNotifier:
    """Sends counters and timers for each event to a StatsD/DogStatsD agent."""

    Settings = StatsdSettings

    def __init__(self, settings: StatsdSettings, *, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.name or "statsd"

    def wants(self, event: Event) -> bool:
        return wants(self.settings.events, event.kind)

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError."""
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            infos = await anyio.getaddrinfo(
                self.settings.host, self.settings.port, type=socket.SOCK_DGRAM
            )
            family, _, _, _, sockaddr = infos[0]
            if family not in (socket.AF_INET, socket.AF_INET6):
                raise OSError(f"unsupported address family {family!r}")
            # unconnected on purpose: an ICMP "port unreachable" for one line must not fail
            # the next send, StatsD is fire-and-forget
            async with await anyio.create_udp_socket(family=family) as sock:
                for line in statsd_lines(event, self.settings):
                    await sock.sendto(line.encode(), str(sockaddr[0]), int(sockaddr[1]))
        except OSError as exc:
            raise NotifyError(
                f"{self.name}: cannot send to StatsD at {where}: {exc.strerror or exc}",
                adapter=self.name,
                hint="check host and port of the StatsD agent",
            ) from exc

    async def aclose(self) -> None:
        pass
