"""A deadline on every read of a host's state, around any `HostDriver` (the caller owns the
deadline: the engine wraps the configured driver in `ReadDeadline` in `build_fleet`, the way
`journal.faults` wraps a journal).

A host's driver read (its active release, its installed releases, whether a release can be
installed) goes to the host: over SSH, WinRM, or to a local disk. A host that stalls (its
sshd session stopped, a hung mount under the release folder, a host frozen mid-answer)
would make `status`, `deploy`'s preflight, `resume` and the look at the fleet before a
revert wait without end. `ReadDeadline` ends each such read at `HOST_READ_S` with a
`HostError` naming the host, which every caller already handles (status shows it, preflight
refuses naming it, a lenient look reads the host as unknown). A host's *steps* (stop,
install, start) have their own deadlines (`timeouts.*`, engine/host.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from immunity.domain import HostRef
from immunity.errors import HostError
from immunity.hosts.base import HostDriver

T = TypeVar("T")

HOST_READ_S = 15.0
"""Most seconds one read of one host's state may take (a host that takes longer does not
answer). Well above an SSH connection's own `connect_timeout` (10 s)."""


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread of its own, so that the event loop (and any deadline around
    this call) goes on while it blocks, e.g. on a file of a hung disk or a stalled mount.

    Cancelled (a deadline), the call returns at once and the thread is abandoned: it ends
    whenever `fn` does, and being a daemon thread it never keeps the process from exiting
    (anyio's worker threads would: a read stuck for good would hang the process at exit).
    Raises what `fn` raises."""
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller, whatever it is
            box["error"] = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(
        target=work, name=f"off-loop {getattr(fn, '__name__', fn)}", daemon=True
    ).start()
    await done.wait()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


class ReadDeadline:
    """A `HostDriver` whose reads end at `limit_s` (HostError); steps and everything else
    (e.g. `preflight`) go to `inner` as they are."""

    def __init__(self, inner: HostDriver, *, adapter: str, limit_s: float | None = None) -> None:
        self.inner = inner
        self.adapter = adapter
        self.limit_s = limit_s

    async def _read(self, what: str, host: HostRef | None, call: Callable[[], Awaitable[T]]) -> T:
        limit = HOST_READ_S if self.limit_s is None else self.limit_s
        try:
            with anyio.fail_after(limit):
                return await call()
        except TimeoutError:
            where = f"host {host.name} ({host.address})" if host is not None else "the driver"
            raise HostError(
                f"{where} did not answer within {limit:g} s when asked for {what}",
                adapter=self.adapter,
                host=host.name if host is not None else None,
                hint="the host (or its ssh session, or the disk under the release folder) may "
                "be stalled: check it answers (`ssh` to it, `ls` the release folder)",
            ) from None

    async def installed_releases(self, host: HostRef) -> list[str]:
        return await self._read(
            "its installed releases", host, lambda: self.inner.installed_releases(host)
        )

    async def active_release(self, host: HostRef) -> str | None:
        return await self._read("its active release", host, lambda: self.inner.active_release(host))

    async def check_release(self, release: str) -> None:
        await self._read(
            f"whether release {release} can be installed",
            None,
            lambda: self.inner.check_release(release),
        )

    async def install(self, host: HostRef, release: str) -> None:
        await self.inner.install(host, release)

    async def stop(self, host: HostRef) -> None:
        await self.inner.stop(host)

    async def start(self, host: HostRef, release: str) -> None:
        await self.inner.start(host, release)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # preflight, settings... of the inner driver
        return getattr(self.inner, name)
