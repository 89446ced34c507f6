"""What only the SQLite journal has (the Journal contract itself: tests/integration/journal)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from immunity.errors import JournalError
from immunity.journal.sqlite import SqliteJournal


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
