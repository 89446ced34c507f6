"""The journal: durable, append-only record of every deployment (SQLite by default)."""

from __future__ import annotations

from pathlib import Path

from immunity.errors import ConfigError
from immunity.journal.base import DeploymentRecord, Journal, JournalEntry, Lease
from immunity.journal.faults import with_faults
from immunity.journal.holder import explain_lease_held, holder_alive, holder_name, holder_stopped
from immunity.journal.sqlite import SqliteJournal, new_deployment_id

__all__ = [
    "DeploymentRecord",
    "Journal",
    "JournalEntry",
    "Lease",
    "SqliteJournal",
    "explain_lease_held",
    "holder_alive",
    "holder_name",
    "holder_stopped",
    "new_deployment_id",
    "open_journal",
]


def open_journal(path: Path, url: str | None = None) -> Journal:
    """The journal a config names: a shared PostgreSQL database (`url`) or a SQLite file,
    with the fault suite's fault points when $IMMUNITY_FAULT_KILL_AT or
    $IMMUNITY_FAULT_STOP_IN_WRITE asks for one (`journal.faults`).

    Raises ConfigError for a URL of another scheme, JournalError when it cannot be opened.
    """
    return with_faults(_open(path, url))


def _open(path: Path, url: str | None) -> Journal:
    if url:
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("postgresql", "postgres"):
            from immunity.journal.postgres import PostgresJournal

            return PostgresJournal(url)
        if scheme == "sqlite":
            return SqliteJournal(url.split(":", 1)[1])
        raise ConfigError(
            f"journal.url: expected postgresql://USER@HOST:PORT/DB or sqlite:PATH, "
            f"got a {scheme!r} URL",
            hint="the password comes from ${ENV} in the URL, PGPASSWORD or ~/.pgpass",
        )
    return SqliteJournal(path)
