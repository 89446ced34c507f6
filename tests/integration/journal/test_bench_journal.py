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
