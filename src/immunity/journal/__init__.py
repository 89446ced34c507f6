"""The journal: durable, append-only record of every deployment (SQLite by default)."""

from immunity.journal.base import DeploymentRecord, Journal, JournalEntry, Lease
from immunity.journal.sqlite import SqliteJournal

__all__ = ["DeploymentRecord", "Journal", "JournalEntry", "Lease", "SqliteJournal"]
