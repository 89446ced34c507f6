"""A deployment interrupted in its bake blocks the next one until it is resumed or aborted.

New-user trial, finding 1/2: v13 interrupted (Ctrl-C) 4 s into the wave-1 bake left h1 on
v13; `deploy v14` was accepted, took v13 for h1's "previous" release and reverted h1 to it,
and the v13 deployment could no longer be resumed. Now the second deploy is refused (exit 2,
nothing touched, naming the run and the way out) and `resume --abort` puts every host back
on the release it served before. Real 3-host sandbox (HAProxy, local hosts) through the CLI;
the assertions read HAProxy's `show servers state` and each host's own process.
Beside it, finding 4: an access log that sees none of the traffic HAProxy serves is refused.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from e2e_helpers import FAST, Load, Sandbox
from test_lifecycle import ensure_on, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_sigint_in_the_bake_then_a_new_deploy_is_refused_until_resume_abort(
    fleet3: Sandbox,
) -> None:
    ensure_on(fleet3, "v1")
    cfg = fleet3.write_config(
        "unfinished.yaml",
        **{**FAST, "checks": [], "bake": {"min": "30s", "max": "60s", "interval": "500ms"}},
    )
    p = fleet3.start("deploy", "-c", str(cfg), "--release", "v3")
    wait_for(
        lambda: fleet3.releases_served()["h1"] == "v3" and fleet3.servers_state()["h1"] == 0,
        "h1 never came back on v3",
        p,
    )
    time.sleep(4)  # into the wave-1 bake
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert 130 == p.returncode, out + err[-2000:]
    left = {"h1": "v3", "h2": "v1", "h3": "v1"}
    assert left == fleet3.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()

    for args in (["--release", "bad"], ["--release", "bad", "--dry-run"]):
        r = fleet3.run("deploy", "-c", str(cfg), *args)
        assert 2 == r.returncode, r.stdout + r.stderr[-2000:]
        assert "interrupted" in r.stderr and "h1 on v3" in r.stderr, r.stderr
        assert "immunity resume" in r.stderr and "--abort" in r.stderr, r.stderr
        assert left == fleet3.releases_served()  # nothing touched
        assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()

    st = fleet3.run("status", "-c", str(cfg), "--json", "--check")
    assert 4 == st.returncode, st.stdout + st.stderr
    data = json.loads(st.stdout)
    assert data["steady"] is False
    assert any("mixed" in a for a in data["attention"]), data["attention"]

    r = fleet3.run("resume", "-c", str(cfg), "--abort")
    assert 3 == r.returncode, r.stdout + r.stderr[-2000:]
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()
    st = fleet3.run("status", "-c", str(cfg), "--json", "--check")
    assert 0 == st.returncode, st.stdout + st.stderr
    assert json.loads(st.stdout)["steady"] is True
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--dry-run")
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]


def test_an_access_log_that_sees_none_of_the_pools_traffic_is_refused(fleet3: Sandbox) -> None:
    """Finding 4: access_log pointed at an empty file while customers go through HAProxy.
    With the signal's own socket, the signal refuses; without one, preflight asks the
    balancer's counters (show stat lastsess) and refuses too: exit 2, nothing touched,
    naming the file or the signal and the counts. The sandbox's own log passes."""
    (fleet3.dir / "empty.log").write_text("")
    lb = {"kind": "haproxy", "name": "lb", "backend": "be_app", "access_log": "empty.log"}
    with_socket = fleet3.write_config(
        "empty-log.yaml", signals=[{**lb, "socket": "haproxy/admin.sock"}]
    )
    no_socket = fleet3.write_config("empty-log-nosock.yaml", signals=[lb])
    before = fleet3.releases_served(), fleet3.servers_state()
    load = Load(fleet3, 40)
    try:
        time.sleep(2)
        r = fleet3.run("deploy", "-c", str(with_socket), "--release", "v2", "--dry-run")
        assert 2 == r.returncode, r.stdout + r.stderr[-2000:]
        assert "empty.log shows no request" in r.stderr and "last session h1" in r.stderr
        r = fleet3.run("deploy", "-c", str(no_socket), "--release", "v2")
        assert 2 == r.returncode, r.stdout + r.stderr[-2000:]
        assert "signal 'lb' saw no request" in r.stderr and "last session h1" in r.stderr
        assert before == (fleet3.releases_served(), fleet3.servers_state())  # nothing touched
        r = fleet3.run("deploy", "-c", str(fleet3.config), "--release", "v2", "--dry-run")
        assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    finally:
        load.stop()
