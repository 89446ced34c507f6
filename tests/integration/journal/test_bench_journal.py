"""`immunity bench journal`'s race, small: every app deployed exactly once by one of the
racing processes, the others refused, no wrong grant, on both journals."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunity.bench.journal import run_journal


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_racing_orchestrators_each_app_granted_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """3 processes race for 4 apps of 6 hosts: every app deployed, every attempt granted or
    refused, 0 wrong grants, each deployment's entries written by its holder only."""
    location = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:{tmp_path / 'j.db'}"
    )
    r = run_journal(location, apps=4, processes=3, hosts=6, parallel=2)
    # a process that starts late (loaded machine) may find an app free again: granted anew
    assert r["apps_deployed"] == 4 and r["deployments"] + r["refused_correctly"] == 12, r
    assert r["wrong_grants"] == 0, r["problems"]
    assert r["writes"] > 4 * 6 * 15


@pytest.mark.timeout(300)
def test_bench_journal_writes_walks_every_host_both_ways_on_both_journals(
    pg_url: str, tmp_path: Path
) -> None:
    """`immunity bench journal-writes`, small (5 hosts, 2 at a time): on PostgreSQL and on
    SQLite, ours takes 8 writes per switch and the naive way 15, and both leave the same 75
    rows, as each journal reads them back; the server holds both deployments' rows (150)."""
    import psycopg

    from immunity.bench.journal_writes import run

    r = run(pg_url, hosts=5, parallel=2, sqlite_path=str(tmp_path / "j.db"))
    got = {(x["journal"].split()[0], x["way"]): x for x in r["runs"]}
    assert set(got) == {(j, w) for j in ("postgresql", "sqlite") for w in ("ours", "naive")}
    for (_, way), x in got.items():
        assert x["writes_per_switch"] == (8 if way == "ours" else 15), x
        assert x["rows"] == 5 * 15 and x["commits_per_switch"] > 0, x
    with psycopg.connect(pg_url) as c:
        (n,) = c.execute("SELECT count(*) FROM entries").fetchone()  # type: ignore[misc]
    assert n == 2 * 5 * 15
