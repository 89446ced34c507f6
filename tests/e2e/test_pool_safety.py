"""Settings and a balancer that would let customers lose the pool are refused (issue 8 kind 2).

Each case runs `deploy` on the 3-host sandbox and reads HAProxy's own view afterwards:
nothing may have been touched.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
import yaml
from e2e_helpers import FAST, Sandbox

from immunity.sandbox import fleet as sandbox

pytestmark = pytest.mark.slow


def _status_of(sbx: Sandbox, server: str) -> str:
    """HAProxy's own status column for one server of be_app (UP, DOWN, MAINT...)."""
    text = sandbox.haproxy_command(sbx.dir, "show stat be_app 4 -1")
    head = text.splitlines()[0].lstrip("# ").split(",")
    for line in text.splitlines()[1:]:
        cols = line.split(",")
        if len(cols) > 1 and cols[1] == server:
            return cols[head.index("status")]
    raise AssertionError(f"{server} not in be_app: {text}")


def test_max_unavailable_of_the_whole_fleet_exits_2_naming_its_line(fleet3: Sandbox) -> None:
    """`max_unavailable: 3` on 3 hosts: exit 2 at the setting's line, HAProxy untouched."""
    before = fleet3.servers_state()
    cfg = fleet3.write_config("maxu.yaml", **{**FAST, "max_unavailable": 3})
    line = next(
        i for i, t in enumerate(cfg.read_text().splitlines(), 1) if t.startswith("max_unavail")
    )
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
    assert 2 == r.returncode, r.stdout + r.stderr
    assert f"maxu.yaml:{line}:" in r.stderr and "use at most 2" in r.stderr
    assert before == fleet3.servers_state()


def test_a_pool_member_the_config_does_not_list_is_refused_unless_unmanaged(
    fleet3: Sandbox,
) -> None:
    """A config of h1 and h2 while be_app also serves h3: exit 2 naming h3; listing h3 in
    `unmanaged_members` lets the dry run through."""
    before = fleet3.servers_state()
    data = yaml.safe_load(fleet3.config.read_text())
    data.update(FAST)
    data["hosts"] = data["hosts"][:2]
    cfg = fleet3.dir / "twohosts.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
    assert 2 == r.returncode, r.stdout + r.stderr
    assert "pool member h3" in r.stderr and "unmanaged_members" in r.stderr
    assert before == fleet3.servers_state()
    st = fleet3.run("status", "-c", str(cfg), "--json")
    assert "pool member h3" in st.stdout
    data["unmanaged_members"] = ["h3"]
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--dry-run")
    assert 0 == r.returncode, r.stdout + r.stderr
    assert before == fleet3.servers_state()


def test_a_host_the_balancer_reports_down_is_refused_naming_it(fleet3: Sandbox) -> None:
    """h2 forced DOWN in HAProxy: exit 2 naming h2 before anything is touched."""
    cfg = fleet3.write_config("down.yaml", **FAST)
    sandbox.haproxy_command(fleet3.dir, "disable health be_app/h2")
    sandbox.haproxy_command(fleet3.dir, "set server be_app/h2 health down")
    try:
        deadline = time.monotonic() + 10
        while not _status_of(fleet3, "h2").startswith("DOWN"):
            assert time.monotonic() < deadline, _status_of(fleet3, "h2")
            time.sleep(0.1)
        before = fleet3.servers_state()
        r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
        assert 2 == r.returncode, r.stdout + r.stderr
        assert "h2 is unhealthy in the balancer" in r.stderr
        assert before == fleet3.servers_state()
    finally:
        sandbox.haproxy_command(fleet3.dir, "enable health be_app/h2")
        sandbox.haproxy_command(fleet3.dir, "set server be_app/h2 health up")
    deadline = time.monotonic() + 10
    while not _status_of(fleet3, "h2").startswith("UP"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_release_name_with_a_newline_exits_2_before_anything(fleet3: Sandbox) -> None:
    """`--release $'v2\\n'` and a 300-character name: exit 2 saying what a name may be."""
    before = fleet3.servers_state()
    for bad in ("v2\n", "v" * 300):
        r = fleet3.run("deploy", "-c", str(fleet3.config), "--release", bad)
        assert 2 == r.returncode, r.stdout + r.stderr
        assert "a release name is 1 to 128 characters" in r.stderr
        assert "Traceback" not in r.stderr
    assert before == fleet3.servers_state()


def _journal_rows(sbx: Sandbox, since_seq: int, kind: str) -> list[tuple[int, str, str | None]]:
    """Journal entries of `kind` after `since_seq`, read from the file (none before it exists)."""
    try:
        with sqlite3.connect(sbx.dir / "journal.db") as db:
            return db.execute(
                "SELECT seq, kind, host FROM entries WHERE seq > ? AND kind = ?",
                (since_seq, kind),
            ).fetchall()
    except sqlite3.OperationalError:
        return []


def _last_seq(sbx: Sandbox) -> int:
    try:
        with sqlite3.connect(sbx.dir / "journal.db") as db:
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def _up_servers(sbx: Sandbox) -> set[str]:
    text = sandbox.haproxy_command(sbx.dir, "show stat be_app 4 -1")
    head = text.splitlines()[0].lstrip("# ").split(",")
    out = set()
    for line in text.splitlines()[1:]:
        cols = line.split(",")
        if len(cols) > 1 and cols[head.index("status")].startswith("UP"):
            out.add(cols[1])
    return out


def test_a_host_out_of_the_pool_is_refused_with_the_command_that_mends_it(
    fleet3: Sandbox,
) -> None:
    """h3 left in maint (as after an interrupted run): exit 2 naming h3 and `immunity
    resume`, instead of a wave waiting for capacity h3 holds."""
    cfg = fleet3.write_config("maint.yaml", **FAST)
    sandbox.haproxy_command(fleet3.dir, "set server be_app/h3 state maint")
    try:
        before = fleet3.servers_state()
        r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", timeout=60)
        assert 2 == r.returncode, r.stdout + r.stderr
        assert "h3 is out of the pool" in r.stderr and "immunity resume -c" in r.stderr
        assert before == fleet3.servers_state()
    finally:
        sandbox.haproxy_command(fleet3.dir, "set server be_app/h3 state ready")


def test_a_warmup_path_answering_404_is_refused_before_anything(fleet3: Sandbox) -> None:
    """`warmup.path` answering 404 (or a redirect) would never be warm, nor would the
    revert: exit 2 at preflight naming the path and the status, HAProxy untouched."""
    before = fleet3.servers_state()
    cfg = fleet3.write_config(
        "warm404.yaml", **{**FAST, "checks": [], "warmup": {**FAST["warmup"], "path": "/nope"}}
    )
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", timeout=120)
    assert 2 == r.returncode, r.stdout + r.stderr
    assert "warmup.path /nope answers HTTP 404 on h1, expected 2xx" in r.stderr
    assert before == fleet3.servers_state()
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()


def test_a_drain_never_takes_the_last_serving_host(fleet3: Sandbox) -> None:
    """max_unavailable 2 with h1 forced DOWN after wave 1: wave 2 drains h2 and h3 one at
    a time, so HAProxy always has a server UP (sampled throughout), and the deploy ends."""
    cfg = fleet3.write_config(
        "lastone.yaml",
        **{**FAST, "checks": [], "max_unavailable": 2, "bake": {**FAST["bake"], "min": "3s"}},
    )
    seq = _last_seq(fleet3)
    proc = fleet3.start("deploy", "-c", str(cfg), "--release", "v2")
    up_seen: list[set[str]] = []
    forced = False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, "deploy did not end"
            if not forced and any(
                h == "h1" for _, _, h in _journal_rows(fleet3, seq, "host.switched")
            ):
                sandbox.haproxy_command(fleet3.dir, "disable health be_app/h1")
                sandbox.haproxy_command(fleet3.dir, "set server be_app/h1 health down")
                forced = True
            if forced:
                up_seen.append(_up_servers(fleet3))
            time.sleep(0.05)
        out, errout = proc.communicate()
        assert forced, errout
        assert 0 == proc.returncode, out + errout
        assert up_seen and all(up_seen), [s for s in up_seen if not s][:3]
        assert {"h2", "h3"} <= set().union(*up_seen)
    finally:
        sandbox.haproxy_command(fleet3.dir, "enable health be_app/h1")
        sandbox.haproxy_command(fleet3.dir, "set server be_app/h1 health up")
        if proc.poll() is None:
            proc.kill()
