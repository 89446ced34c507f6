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

import datetime as dt
import http.server
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from e2e_helpers import FAST, Load, Sandbox
from test_lifecycle import ensure_on, wait_for

pytestmark = pytest.mark.slow


class _Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: every notification's kind and message."""

    received: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((body["kind"], body["message"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(300)
def test_sigint_in_the_bake_then_a_new_deploy_is_refused_until_resume_abort(
    fleet3: Sandbox,
) -> None:
    """Beside the refusal: the refusal ends with one `next:` line (it said `hint:`), and
    `resume --abort` is its own outcome, `aborted`, exit 0 (it was exit 3 "release rejected"
    and "after the verdict" with no verdict): in the terminal, the JSON, the notification,
    `show` and `history`, which does not count it as a change failure."""
    ensure_on(fleet3, "v1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = fleet3.write_config(
        "unfinished.yaml",
        **{
            **FAST,
            "checks": [],
            "bake": {"min": "30s", "max": "60s", "interval": "500ms"},
            "notify": [{"kind": "webhook", "url": f"http://127.0.0.1:{server.server_port}/"}],
        },
    )
    try:
        _refused_then_aborted(fleet3, cfg)
    finally:
        server.shutdown()
    assert "deployment.aborted" in [k for k, _ in _Hook.received], _Hook.received
    said = dict(_Hook.received)["deployment.aborted"]
    assert "resume --abort" in said and "v3 was not judged" in said, said


def _refused_then_aborted(fleet3: Sandbox, cfg: Path) -> None:
    p = fleet3.start("deploy", "-c", str(cfg), "--release", "v3")
    wait_for(
        lambda: fleet3.releases_served()["h1"] == "v3" and fleet3.servers_state()["h1"] == 0,
        "h1 never came back on v3",
        p,
    )
    wait_for(lambda: _looks(fleet3) > 0, "wave 1 never baked", p)  # into the wave-1 bake
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert 130 == p.returncode, out + err[-2000:]
    # every place that says how the run ended says "interrupted" once, and what was received
    assert out.startswith("interrupted v3 (") and "\n  SIGINT received; hosts in flight" in out
    show = fleet3.run("show", "-c", str(cfg)).stdout.splitlines()
    assert show[1].startswith("the deployment of v3 was interrupted: SIGINT received; "), show
    history = fleet3.run("history", "-c", str(cfg)).stdout
    row = next(line for line in history.splitlines() if "│ v3 " in line)
    assert row.count("interrupted") == 1 and "SIGINT received" in row, history
    for text in (out, *show, *history.splitlines()):
        assert "interrupted: interrupted" not in text and "interrupted by signal" not in text
    left = {"h1": "v3", "h2": "v1", "h3": "v1"}
    assert left == fleet3.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()

    for args in (["--release", "bad"], ["--release", "bad", "--dry-run"]):
        r = fleet3.run("deploy", "-c", str(cfg), *args)
        assert 2 == r.returncode, r.stdout + r.stderr[-2000:]
        assert "interrupted" in r.stderr and "h1 on v3" in r.stderr, r.stderr
        # one `next:` line (wrapped at the console's width) ends it; no `hint:`
        assert 1 == r.stderr.count("next: ") and "hint:" not in r.stderr, r.stderr
        last = r.stderr[r.stderr.index("\nnext: ") :]
        assert "immunity resume" in last and "--abort" in last, r.stderr
        assert left == fleet3.releases_served()  # nothing touched
        assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()

    st = fleet3.run("status", "-c", str(cfg), "--json", "--check")
    assert 4 == st.returncode, st.stdout + st.stderr
    data = json.loads(st.stdout)
    assert data["steady"] is False
    assert any("mixed" in a for a in data["attention"]), data["attention"]

    r = fleet3.run("resume", "-c", str(cfg), "--abort", "--json", "abort.json")
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()
    result = json.loads((fleet3.dir / "abort.json").read_text())
    assert ("aborted", 0, "abort") == (
        result["outcome"],
        result["exit_code"],
        result["reverted_from"],
    )
    assert r.stdout.startswith("aborted v3"), r.stdout
    for text in (r.stdout, fleet3.run("show", "-c", str(cfg)).stdout):
        assert "after the verdict" not in text and "rejected" not in text, text
        assert "after `resume --abort`" in text, text
    assert (
        "the deployment of v3 was aborted and the fleet reverted"
        in fleet3.run("show", "-c", str(cfg)).stdout
    )
    hist = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)
    assert ("aborted", "aborted") == (
        hist["deployments"][-1]["outcome"],
        hist["deployments"][-1]["category"],
    )
    assert hist["figures"]["aborted"] >= 1
    # the aborted run's row and the figures say "aborted" once, and do not count the abort as
    # a run "resumed and finished"
    human = fleet3.run("history", "-c", str(cfg)).stdout
    row = next(line for line in human.splitlines() if "│ v3 " in line)
    assert "aborted (not judged)" in row and "(aborted," not in row, human
    assert "resumed ×" not in human.split(row, 1)[1].split("│ 20")[0], human
    assert "resumed and finished" not in human.splitlines()[-1] + human.splitlines()[-2], human
    assert hist["deployments"][-1]["id"] == result["deployment_id"]
    assert "aborted (`resume --abort`)" in fleet3.run("history", "-c", str(cfg)).stdout

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


def _looks(sbx: Sandbox) -> int:
    """How many looks the last deployment's bake journaled."""
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        return int(
            db.execute(
                "SELECT count(*) FROM entries WHERE kind = 'bake.looked' AND deployment_id = "
                "(SELECT id FROM deployments ORDER BY started_at DESC LIMIT 1)"
            ).fetchone()[0]
        )


def _journal(
    sbx: Sandbox, deployment_id: str
) -> list[tuple[dt.datetime, str, str | None, dict[str, Any]]]:
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        rows = db.execute(
            "SELECT at, kind, host, data FROM entries WHERE deployment_id=? ORDER BY seq",
            (deployment_id,),
        ).fetchall()
    return [(dt.datetime.fromisoformat(a), k, h, json.loads(d)) for a, k, h, d in rows]


@pytest.mark.timeout(300)
def test_detected_after_counts_from_the_first_canary_in_across_a_resume(fleet3: Sandbox) -> None:
    """A bad release interrupted in its first bake and resumed 3 s later is caught after the
    resume; `detected after` is from its first canary entering the pool (the journal's
    `host.switched`) to the failing verdict, as the journal has them, not from the resume."""
    ensure_on(fleet3, "v1")
    cfg = fleet3.write_config("detected.yaml", **FAST)
    p = fleet3.start("deploy", "-c", str(cfg), "--release", "bad")
    wait_for(
        lambda: fleet3.releases_served()["h1"] == "bad" and fleet3.servers_state()["h1"] == 0,
        "h1 never came back on bad",
        p,
    )
    p.send_signal(signal.SIGINT)  # in the bake, before a verdict on 12 probe requests/s
    out, err = p.communicate(timeout=60)
    assert 130 == p.returncode, out + err[-2000:]
    time.sleep(3)
    r = fleet3.run("resume", "-c", str(cfg), "--json", "detected.json")
    assert 3 == r.returncode, r.stdout + r.stderr[-2000:]
    result = json.loads((fleet3.dir / "detected.json").read_text())
    entries = _journal(fleet3, result["deployment_id"])
    first_in = next(a for a, k, h, d in entries if k == "host.switched" and d["release"] == "bad")
    resumed = next(a for a, k, h, d in entries if k == "deployment.resumed")
    verdict = next(a for a, k, h, d in entries if k == "verdict.failed")
    assert (resumed - first_in).total_seconds() > 3
    expected = (verdict - first_in).total_seconds()
    assert expected == pytest.approx(result["detected_after_s"], abs=0.1), result
    assert (
        f"detected {result['detected_after_s']:.1f} s after the first canary entered the pool"
        in r.stdout
    ), r.stdout
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()


@pytest.mark.timeout(300)
def test_deploying_the_release_every_host_runs_touches_no_host(
    fleet3: Sandbox,
) -> None:
    """Deploying v1 to a fleet all on v1 baked and ran the whole watch. Now it says so, exits
    0 touching no host (the journal's record of the run holds no host step and no bake) and
    is journaled `unchanged`: `history` lists it without counting it as a deployment.
    (`rollback` past it and `--force`: test_revert_targets, in virtual time.)"""
    ensure_on(fleet3, "v1")
    cfg = fleet3.write_config("same.yaml", **FAST)
    figures = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)["figures"]
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v1", "--json", "same.json")
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    result = json.loads((fleet3.dir / "same.json").read_text())
    assert "unchanged" == result["outcome"]
    assert "every host already serves v1" in r.stdout and "--force" in r.stdout, r.stdout
    kinds = [k for _, k, _, _ in _journal(fleet3, result["deployment_id"])]
    assert [] == [k for k in kinds if k.startswith(("host.", "bake.", "guard.", "wave."))]
    assert "deployment.unchanged" == kinds[-1]
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state()
    hist = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)
    assert ("unchanged", "unchanged") == (
        hist["deployments"][-1]["outcome"],
        hist["deployments"][-1]["category"],
    )
    assert figures["deployments"] == hist["figures"]["deployments"]
    assert 1 + (figures.get("unchanged") or 0) == hist["figures"]["unchanged"]
    # `show` says it once: not "nothing was deployed: every host already serves v1: nothing
    # was deployed, ..."
    said = fleet3.run("show", "-c", str(cfg)).stdout.splitlines()[1]
    assert said.startswith("v1 already ran on every host: nothing was deployed, no host"), said
    assert 1 == said.count("nothing was deployed") and "already serves" not in said, said
