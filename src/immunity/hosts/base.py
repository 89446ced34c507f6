"""The `HostDriver` role: what is installed and running on one host.

A host has several releases installed and exactly one active (IIS: one site per release, one
started). Every method is async, idempotent, and maps foreign errors into `HostError`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from immunity.domain import HostRef


@runtime_checkable
class HostDriver(Protocol):
    async def installed_releases(self, host: HostRef) -> list[str]:
        """Names of the releases installed on `host`, oldest first."""
        ...

    async def active_release(self, host: HostRef) -> str | None:
        """The release currently started on `host`, or None when none runs."""
        ...

    async def install(self, host: HostRef, release: str) -> None:
        """Install `release` on `host` if absent. Done when it can be started. Idempotent."""
        ...

    async def stop(self, host: HostRef) -> None:
        """Stop the active release. Done when nothing serves on the host's port. Idempotent."""
        ...

    async def start(self, host: HostRef, release: str) -> None:
        """Make `release` the active one and start it (stopping any other). Done when the
        process is launched; readiness is checked by verify/warm-up. Idempotent."""
        ...

    async def check_release(self, release: str) -> None:
        """Raise `PreflightError` when `release` cannot be installed (unknown package...)."""
        ...

    async def aclose(self) -> None: ...
