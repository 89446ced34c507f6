"""The SQLite journal: durable entries, leases and fencing tokens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from immunity.errors import JournalError, LeaseHeld, LeaseLost
from immunity.journal.sqlite import SqliteJournal


def test_entries_survive_reopening_the_file(tmp_path: Path) -> None:
    """What was appended is read back, in order, by a new connection."""
    j = SqliteJournal(tmp_path / "j.db")
    d = j.begin("shop", "v2", {"fallbacks": {"h1": "v1"}})
    j.append(d.id, "host.step_started", host="h1", step="drain")
    j.append(d.id, "host.step_finished", host="h1", step="drain")
    j.close()
    j2 = SqliteJournal(tmp_path / "j.db")
    kinds = [e.kind for e in j2.entries(d.id)]
    assert kinds == ["host.step_started", "host.step_finished"]
    assert j2.deployments("shop")[0].data["fallbacks"] == {"h1": "v1"}


def test_a_second_holder_is_refused_while_the_first_heartbeats(tmp_path: Path) -> None:
    """acquire_lease raises LeaseHeld naming the holder."""
    j = SqliteJournal(tmp_path / "j.db")
    j.acquire_lease("shop", "a:1", "d1", 30)
    with pytest.raises(LeaseHeld) as info:
        j.acquire_lease("shop", "b:2", "d2", 30)
    assert "a:1" in info.value.message


def test_an_expired_lease_needs_takeover(tmp_path: Path) -> None:
    """A dead holder's lease is refused without takeover, granted with a newer token with it."""
    j = SqliteJournal(tmp_path / "j.db")
    first = j.acquire_lease("shop", "a:1", "d1", 0.0)
    with pytest.raises(LeaseHeld) as info:
        j.acquire_lease("shop", "b:2", "d2", 30)
    assert "resume" in (info.value.hint or "")
    second = j.acquire_lease("shop", "b:2", "d1", 30, takeover=True)
    assert second.token == first.token + 1


def test_a_stale_token_can_change_nothing(tmp_path: Path) -> None:
    """After a takeover the old holder's appends and heartbeats raise LeaseLost."""
    j = SqliteJournal(tmp_path / "j.db")
    d = j.begin("shop", "v2", {})
    old = j.acquire_lease("shop", "a:1", d.id, 0.0)
    j.acquire_lease("shop", "b:2", d.id, 30, takeover=True)
    with pytest.raises(LeaseLost):
        j.append(d.id, "host.step_started", host="h1", step="drain", token=old.token)
    with pytest.raises(LeaseLost):
        j.heartbeat(old)
    assert list(j.entries(d.id)) == []


def test_a_released_lease_is_free(tmp_path: Path) -> None:
    """After release_lease a new deployment takes the lease at once."""
    j = SqliteJournal(tmp_path / "j.db")
    lease = j.acquire_lease("shop", "a:1", "d1", 30)
    j.release_lease(lease)
    assert j.current_lease("shop") is None
    assert j.acquire_lease("shop", "b:2", "d2", 30).token == lease.token + 1


def test_an_unwritable_journal_is_a_journal_error(tmp_path: Path) -> None:
    """A write that fails raises JournalError with the path."""
    j = SqliteJournal(tmp_path / "j.db")
    d = j.begin("shop", "v2", {})
    other = sqlite3.connect(tmp_path / "j.db")
    other.execute("DROP TABLE entries")
    other.commit()
    other.close()
    with pytest.raises(JournalError) as info:
        j.append(d.id, "x.happened")
    assert "j.db" in info.value.message
