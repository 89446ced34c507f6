"""The HTTP prober: GET the host's health and warm-up URLs directly (`host.base_url`).

verify: GET `verify.path` until the status is one of `verify.expect_status` (every 50 ms,
5 s per request). warm-up: GET `warmup.path` until `warmup.consecutive` answers in a row have
an expected status (`warmup.expect_status`, 2xx by default) and took at most
`warmup.latency_bar`; `consecutive` answers in a row with a status no cold start explains (a
redirect, or a 4xx other than 408/429) raise `StepFailed` at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from immunity.clock import SYSTEM_CLOCK, Clock
from immunity.config.models import VerifyConfig, WarmupConfig
from immunity.config.types import status_ok
from immunity.domain import HostRef
from immunity.errors import StepFailed

if TYPE_CHECKING:  # httpx is imported where a request is sent: `status` never sends one
    import httpx

VERIFY_REQUEST_TIMEOUT_S = 5.0
VERIFY_PAUSE_S = 0.05
WARM_BAR_HOSTS = 3
"""Preflight measures the warm-up latency of this many hosts (the first that answer)."""
WARM_BAR_TRIES = 5
"""Requests per host to find its fastest warm answer."""


class HttpProber:
    """`Prober` over HTTP; one connection pool for every host, closed by `aclose`."""

    def __init__(
        self, verify: VerifyConfig, warmup: WarmupConfig, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.verify_config = verify
        self.warmup_config = warmup
        self.clock = clock
        self._http: httpx.AsyncClient | None = None
        self._last: dict[str, str] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        import httpx

        if self._http is None:  # built on first use, inside the event loop that uses it
            self._http = httpx.AsyncClient(verify=self.verify_config.tls_verify)
        return self._http

    async def check_paths(self, hosts: Sequence[HostRef]) -> list[str]:
        """One request to each host's `verify.path` and `warmup.path` on the release it runs now.

        A path that answers an unexpected status there (a 404, a redirect) would fail every
        switch, and the revert's warm-up too: it is a config problem, found before anything
        is touched. Hosts that do not answer at all are left to the steps' own deadlines.
        """
        import httpx

        out = []
        warm_best: dict[str, float] = {}  # host -> fastest expected warm-up answer (s)
        w = self.warmup_config
        for h in hosts:
            for field, path, expect in (
                ("verify.path", self.verify_config.path, self.verify_config.expect_status),
                ("warmup.path", w.path, w.expect_status),
            ):
                try:
                    started = self.clock.monotonic()
                    r = await self.http.get(h.base_url + path, timeout=VERIFY_REQUEST_TIMEOUT_S)
                    took = self.clock.monotonic() - started
                except httpx.HTTPError:
                    continue
                if not status_ok(expect, r.status_code):
                    field_status = field.replace("path", "expect_status")
                    out.append(
                        f"{field} {path} answers HTTP {r.status_code} on {h.name}, expected "
                        f"{'/'.join(expect)}: set {field} to a page that answers "
                        f"{'/'.join(expect)} (or list {r.status_code} in {field_status})"
                    )
                elif field == "warmup.path" and len(warm_best) < WARM_BAR_HOSTS:
                    warm_best[h.name] = await self._best_latency(h, took)
        if warm_best and min(warm_best.values()) > w.latency_bar:
            best = ", ".join(f"{n} {t * 1000:.3g} ms" for n, t in warm_best.items())
            out.append(
                f"warmup.latency_bar {w.latency_bar * 1000:g} ms: hosts already warm, serving "
                f"customers, answer {w.path} no faster than that (best of "
                f"{WARM_BAR_TRIES} tries: {best}); no warm-up could pass, nor a revert's: "
                "raise warmup.latency_bar above what a warm host takes"
            )
        return out

    async def _best_latency(self, host: HostRef, first: float) -> float:
        """The fastest of a few warm-up requests to a host that is already warm (seconds)."""
        import httpx

        best = first
        url = host.base_url + self.warmup_config.path
        for _ in range(WARM_BAR_TRIES - 1):
            if best <= self.warmup_config.latency_bar:
                break
            started = self.clock.monotonic()
            try:
                await self.http.get(url, timeout=VERIFY_REQUEST_TIMEOUT_S)
            except httpx.HTTPError:
                break
            best = min(best, self.clock.monotonic() - started)
        return best

    def last_answer(self, host: HostRef) -> str | None:
        return self._last.get(host.name)

    async def verify(self, host: HostRef) -> None:
        """The host serves its health URL directly (retried until the step's deadline) with
        one of `verify.expect_status`."""
        import httpx

        v = self.verify_config
        url = host.base_url + v.path
        self._last.pop(host.name, None)
        while True:
            try:
                r = await self.http.get(url, timeout=VERIFY_REQUEST_TIMEOUT_S)
                if status_ok(v.expect_status, r.status_code):
                    return
                self._last[host.name] = (
                    f"HTTP {r.status_code} from {v.path}, expected {'/'.join(v.expect_status)}"
                )
            except httpx.HTTPError as exc:
                self._last[host.name] = f"{type(exc).__name__} from {v.path}"
            await self.clock.sleep(VERIFY_PAUSE_S)

    async def warm_up(self, host: HostRef) -> None:
        """Requests straight to the host until `consecutive` in a row answer with an expected
        status (`warmup.expect_status`, 2xx by default) under the latency bar.

        Raises StepFailed at once when `consecutive` answers in a row are a status that no
        cold start explains (a redirect, or a 4xx other than 408/429): the warm-up path is
        wrong, and counting such answers as warm would send customers to a cold host.
        """
        import httpx

        w = self.warmup_config
        url = host.base_url + w.path
        want = "/".join(w.expect_status)
        in_a_row = 0
        wrong_in_a_row = 0
        self._last.pop(host.name, None)
        while in_a_row < w.consecutive:
            started = self.clock.monotonic()
            ok = False
            try:
                r = await self.http.get(url, timeout=w.request_timeout)
                ok = status_ok(w.expect_status, r.status_code)
                if not ok:
                    self._last[host.name] = f"HTTP {r.status_code} from {w.path}, expected {want}"
                    wrong = 300 <= r.status_code < 500 and r.status_code not in (408, 429)
                    wrong_in_a_row = wrong_in_a_row + 1 if wrong else 0
                    if wrong_in_a_row >= w.consecutive:
                        raise StepFailed(
                            f"{host.name}: warmup failed: {w.path} answered HTTP "
                            f"{r.status_code} {wrong_in_a_row} times in a row, expected {want}",
                            host=host.name,
                            step="warmup",
                            hint="point warmup.path at a page that answers "
                            f"{want} (or list its status in warmup.expect_status)",
                        )
                else:
                    wrong_in_a_row = 0
            except httpx.HTTPError as exc:
                self._last[host.name] = f"{type(exc).__name__} from {w.path}"
                wrong_in_a_row = 0
            took = self.clock.monotonic() - started
            if ok and took > w.latency_bar:
                self._last[host.name] = (
                    f"{took * 1000:.0f} ms from {w.path}, above the {w.latency_bar * 1000:g} ms bar"
                )
            in_a_row = in_a_row + 1 if ok and took <= w.latency_bar else 0
            if in_a_row < w.consecutive:
                await self.clock.sleep(w.pause)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
