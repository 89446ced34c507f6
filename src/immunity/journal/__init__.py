"""The journal: durable, append-only record of every deployment (SQLite by default)."""

from __future__ import annotations

from pathlib import Path

from immunity.errors import ConfigError
from immunity.journal.base import DeploymentRecord, Journal, JournalEntry, Lease
from immunity.journal.sqlite import SqliteJournal, new_deployment_id

__all__ = [
    "DeploymentRecord",
    "Journal",
    "JournalEntry",
    "Lease",
    "SqliteJournal",
    "new_deployment_id",
    "open_journal",
]


def open_journal(path: Path, url: str | None = None) -> Journal:
    """The journal a config names: a SQLite file, or (later) a shared PostgreSQL URL."""
    if url:
        raise ConfigError(
            f"journal.url {url.split('@')[-1]!r}: a shared PostgreSQL journal is not available yet",
            hint="remove journal.url to use the SQLite journal at journal.path",
        )
    return SqliteJournal(path)
