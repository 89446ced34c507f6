"""The hint printed when a lease is held matches its holder."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import anyio
import pytest

from immunity.errors import LeaseHeld
from immunity.journal.holder import explain_lease_held
from immunity.journal.sqlite import SqliteJournal


def held(tmp_path: Path, holder: str, ttl: float, wait_s: float = 0.0) -> LeaseHeld:
    async def main() -> LeaseHeld:
        journal = SqliteJournal(tmp_path / "journal.db")
        await journal.acquire_lease("shop", holder, "d1", ttl)
        await anyio.sleep(wait_s)
        with pytest.raises(LeaseHeld) as caught:
            await journal.acquire_lease("shop", "me:2", "d2", ttl)
        out = await explain_lease_held(journal, "shop", ttl, caught.value)
        await journal.close()
        return out

    return anyio.run(main)


def gone_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_live_heart_beating_holder_gets_wait_for_it(tmp_path: Path) -> None:
    """This very process holds it and beats: wait."""
    exc = held(tmp_path, f"{socket.gethostname()}:{os.getpid()}", 30.0)
    assert exc.hint is not None and exc.hint.startswith("wait for it")
    assert "alive and heart-beating" in exc.message


def test_a_killed_holder_gets_run_resume_even_within_the_ttl(tmp_path: Path) -> None:
    """A holder whose PID is gone on this machine: resume, never "wait"."""
    exc = held(tmp_path, f"{socket.gethostname()}:{gone_pid()}", 30.0)
    assert exc.hint is not None and "immunity resume" in exc.hint
    assert "wait" not in exc.hint
    assert "process is gone" in exc.message


def test_a_live_but_silent_holder_gets_stop_it_then_resume(tmp_path: Path) -> None:
    """Alive on this machine, no heartbeat past the ttl: stop that process, then resume."""
    exc = held(tmp_path, f"{socket.gethostname()}:{os.getpid()}", 0.2, wait_s=0.3)
    assert exc.hint is not None and f"kill {os.getpid()}" in exc.hint
    assert "immunity resume" in exc.hint


def test_a_silent_holder_on_another_machine_gets_run_resume(tmp_path: Path) -> None:
    """Liveness unknown (another machine), heartbeat stale: resume takes it over."""
    exc = held(tmp_path, "elsewhere:1", 0.2, wait_s=0.3)
    assert exc.hint is not None and exc.hint.startswith("run `immunity resume")
