"""`immunity journal copy`: move a team's history from one journal into another (typically a
SQLite file into the shared PostgreSQL journal), idempotently.

Deployments are upserted by id (ids are a UTC timestamp plus a random suffix, so two teams'
journals do not collide); each deployment's entries are append-only, so the copy adds those
after the ones the target already holds. Running it again copies nothing; running it after
more deployments copies only what is new. Leases are live state and are not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunity.errors import ConfigError
from immunity.journal.base import Journal


@dataclass
class CopyResult:
    deployments: int = 0
    new_deployments: int = 0
    entries: int = 0
    new_entries: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def open_location(location: str, *, must_exist: bool = False) -> Journal:
    """`sqlite:PATH`, a plain PATH, or `postgresql://...` -> that journal (opened).

    With `must_exist`, a SQLite file that is not there is a ConfigError (not a new file).
    """
    from immunity.journal import open_journal

    scheme = location.split(":", 1)[0].lower()
    if must_exist and scheme not in ("postgresql", "postgres") and "://" not in location:
        path = Path(location.split(":", 1)[1] if scheme == "sqlite" else location)
        if not path.is_file():
            raise ConfigError(
                f"--from {location}: no such journal file",
                hint="give the journal.path of the team's immunity.yaml, e.g. sqlite:./immunity-journal.db",
            )
    if location.split(":", 1)[0].lower() in ("postgresql", "postgres", "sqlite"):
        return open_journal(Path("unused"), location)
    if "://" in location:
        raise ConfigError(
            f"journal location: expected sqlite:PATH or postgresql://..., got a "
            f"{location.split(':', 1)[0]!r} URL"
        )
    return open_journal(Path(location))


async def copy_journal(src: Journal, dst: Journal, *, app: str | None = None) -> CopyResult:
    """Copy every deployment (of `app`, or all) with its entries from `src` into `dst`.

    `dst` must offer `import_deployment` (both shipped journals do). Raises JournalError when
    either side cannot be read or written; what was copied before stays (each deployment
    is one transaction), and running the copy again finishes it.
    """
    importer: Any = getattr(dst, "import_deployment", None)
    if importer is None:
        raise ConfigError(f"{type(dst).__name__} cannot be copied into")
    known = {d.id for d in await dst.deployments(app)}
    out = CopyResult()
    for record in await src.deployments(app):
        entries = await src.entries(record.id)
        added = int(await importer(record, entries))
        out.deployments += 1
        out.entries += len(entries)
        out.new_entries += added
        if record.id not in known:
            out.new_deployments += 1
    return out
