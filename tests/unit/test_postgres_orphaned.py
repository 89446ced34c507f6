"""Which PostgreSQL sessions a lease grant may end by itself (`journal.postgres.orphaned`):
only an immunity session whose process can no longer use it. The sessions are described as
`pg_stat_activity` gives them; the processes are real (this one, and one that has exited)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

from immunity.journal.holder import machine_name
from immunity.journal.postgres import Session, application_name, orphaned

NOW = dt.datetime.now(dt.UTC)


def session(application: str, *, began: dt.datetime = NOW) -> Session:
    return Session(4321, application, "10.0.0.9", "active", NOW, began)


def lease(holder: str, *, released: bool = False, fresh: bool = True) -> tuple[object, ...]:
    """A lease row as `acquire_lease` reads it: holder, deployment, token, acquired,
    heartbeat, released, fresh (heart-beat within lease_ttl)."""
    return (holder, "d1", 3, NOW, NOW, released, fresh)


def test_only_an_orphaned_immunity_session_may_be_ended() -> None:
    """Another tool's session: never. An immunity session of a holder on another machine:
    only once that holder's lease has expired; not while it heart-beats, not when the lease
    was released (its holder may be starting its next run), not when another holds it. On
    this machine: when its process is gone (a PID that exited, or a PID now of a process
    started after the session began), never while it runs."""
    far = "immunity far-away:4242"
    assert orphaned(session("dba-console"), lease("far-away:4242", fresh=False)) is None
    assert orphaned(session(far), lease("far-away:4242")) is None
    assert orphaned(session(far), lease("far-away:4242", released=True, fresh=False)) is None
    assert orphaned(session(far), lease("elsewhere:1", fresh=False)) is None
    assert orphaned(session(far), None) is None
    why = orphaned(session(far), lease("far-away:4242", fresh=False))
    assert why is not None and "far-away:4242, whose lease has expired" in why

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(30)
    gone = orphaned(session(f"immunity {machine_name()}:{p.pid}"), None)
    assert gone is not None and "is gone" in gone
    assert orphaned(session(application_name()), lease("x:1", fresh=False)) is None
    # a session older than the process now behind its PID belongs to a process gone since
    recycled = orphaned(session(application_name(), began=NOW - dt.timedelta(days=30)), None)
    assert recycled is not None and "is gone" in recycled
    assert application_name() == f"immunity {machine_name()}:{os.getpid()}"
