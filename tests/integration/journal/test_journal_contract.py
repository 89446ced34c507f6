"""The `Journal` contract (`immunity.testing.contracts.JournalContract`) held against the
real journals: SQLite (one file, several connections) and PostgreSQL (a real throwaway
server, several sessions). The in-memory journal passes it in
`tests/unit/testing/test_memory_contracts.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from immunity.journal import Journal, open_journal
from immunity.journal.postgres import PostgresJournal
from immunity.journal.sqlite import SqliteJournal
from immunity.testing.contracts import JournalContract, JournalHarness


class UrlHarness(JournalHarness):
    """Each `connect` is `open_journal` on one URL, as a second `immunity` process would."""

    def __init__(self, url: str, tmp_path: Path, cls: type) -> None:
        super().__init__()
        self.url, self.tmp_path, self.cls = url, tmp_path, cls

    def connect(self) -> Journal:
        j = open_journal(self.tmp_path / "unused.db", self.url)
        assert isinstance(j, self.cls), j  # the journal under test, not another
        return j


class TestSqliteJournal(JournalContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> JournalHarness:
        return UrlHarness(f"sqlite:{tmp_path / 'journal.db'}", tmp_path, SqliteJournal)


class TestPostgresJournal(JournalContract):
    @pytest.fixture
    def harness(self, pg_url: str, tmp_path: Path) -> JournalHarness:
        return UrlHarness(pg_url, tmp_path, PostgresJournal)
