"""Whole deployments on a 3-host sandbox, driven through the CLI as a user would."""

from __future__ import annotations

import http.server
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import FAST, Load, Sandbox, failed

pytestmark = pytest.mark.slow


def plain(sbx: Sandbox) -> Path:
    """A config without checks: used to put the fleet back on a known release quickly."""
    return sbx.write_config("plain.yaml", **{**FAST, "checks": []})


def current(sbx: Sandbox) -> str:
    """The one release the whole fleet serves (each host's own process says so)."""
    served = set(sbx.releases_served().values())
    assert len(served) == 1, served
    return str(served.pop())


def ensure_on(sbx: Sandbox, release: str) -> None:
    if sbx.serves(release):
        return
    r = sbx.run("deploy", "-c", str(plain(sbx)), "--release", release)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_good_release_rolls_over_the_fleet_under_load_without_a_failed_request(
    fleet3: Sandbox,
) -> None:
    """Every host ends on v2 and in the pool, and no customer request failed."""
    ensure_on(fleet3, "v1")
    cfg = fleet3.write_config("good.yaml", **FAST)
    load = Load(fleet3, 60)
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--json", "good.json")
    rows = load.stop()
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    hosts = fleet3.status()["hosts"]
    assert [h["active_release"] for h in hosts] == ["v2"] * 3
    assert [h["lb_state"] for h in hosts] == ["serving"] * 3
    assert fleet3.servers_state() == {"h1": 0, "h2": 0, "h3": 0}
    assert failed(rows) == []
    assert {"h1", "h2", "h3"} <= {r["host"] for r in rows}
    result = json.loads((fleet3.dir / "good.json").read_text())
    assert result["outcome"] == "deployed"
    steps = [s["step"] for s in result["hosts"][0]["steps"]]
    assert steps == ["drain", "stop", "install", "start", "verify", "warmup", "enable"]


def test_a_bad_release_is_reverted_on_every_host_with_exit_3(fleet3: Sandbox) -> None:
    """A release failing every request ends with exit 3, the fleet back on the release it
    ran (v2 after the test above: no deployment spent to go back to v1) and the verdict
    journaled."""
    old = current(fleet3)
    cfg = fleet3.write_config("bad.yaml", **FAST)
    load = Load(fleet3, 60)
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "bad", "--json", "bad.json")
    load.stop()
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    hosts = fleet3.status()["hosts"]
    assert [h["active_release"] for h in hosts] == [old] * 3
    assert [h["lb_state"] for h in hosts] == ["serving"] * 3
    result = json.loads((fleet3.dir / "bad.json").read_text())
    assert result["verdict"]["outcome"] == "fail"
    assert result["detected_after_s"] is not None and result["reverted_after_s"] is not None
    failing = [c for c in result["verdict"]["checks"] if c["outcome"] == "fail"]
    assert failing and failing[0]["numbers"]
    history = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)
    assert history["deployments"][-1]["outcome"] == "reverted"
    # the journal itself holds the verdict with the numbers that decided it
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        row = db.execute(
            "SELECT data FROM entries WHERE kind = 'verdict.failed' AND deployment_id = ?",
            (result["deployment_id"],),
        ).fetchone()
    journaled = json.loads(row[0])["verdict"]
    assert result["verdict"]["reason"] == journaled["reason"]
    assert next(c for c in journaled["checks"] if c["outcome"] == "fail")["numbers"]
    # after the revert the fleet already serves what it ran before: rollback says so, exit 2
    rb = fleet3.run("rollback", "-c", str(cfg))
    assert 2 == rb.returncode, rb.stdout + rb.stderr[-1500:]
    assert "nothing to roll back" in rb.stderr
    assert [h["active_release"] for h in fleet3.status()["hosts"]] == [old] * 3


def test_a_release_that_never_warms_up_is_reverted_with_the_failed_step_as_reason(
    fleet3: Sandbox,
) -> None:
    """A release answering only 500s fails its warm-up; the host goes back to the release it
    ran, exit 3."""
    old = current(fleet3)
    cfg = fleet3.write_config(
        "broken.yaml", **{**FAST, "warmup": {**FAST["warmup"], "timeout": "3s"}}
    )
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "broken", "--json", "-")
    assert 3 == r.returncode, r.stdout + r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert "warmup" in result["verdict"]["reason"]
    assert [old] * 3 == [h["active_release"] for h in fleet3.status()["hosts"]]
    assert {0} == set(fleet3.servers_state().values())


def test_an_unknown_release_is_rejected_with_exit_2_before_anything_is_touched(
    fleet3: Sandbox,
) -> None:
    """Deploying a release that does not exist exits 2 and leaves HAProxy's view as it was."""
    before = fleet3.servers_state()
    r = fleet3.run("deploy", "-c", str(plain(fleet3)), "--release", "v9")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "v9" in r.stderr
    assert before == fleet3.servers_state()


def test_a_config_with_a_wrong_field_is_rejected_with_file_line_and_exit_2(fleet3: Sandbox) -> None:
    """A misspelt field is named with its line; nothing is deployed."""
    bad = fleet3.dir / "typo.yaml"
    bad.write_text(fleet3.config.read_text().replace("max_unavailable:", "max_unavailabel:"))
    r = fleet3.run("deploy", "-c", str(bad), "--release", "v2")
    assert r.returncode == 2
    assert "typo.yaml:" in r.stderr and "max_unavailabel" in r.stderr
    r = fleet3.run("config", "validate", str(bad))
    assert r.returncode == 2


def test_a_host_that_does_not_answer_is_rejected_at_preflight(fleet3: Sandbox) -> None:
    """A config whose host port answers nothing exits 2 without touching the balancer."""
    before = fleet3.servers_state()
    text = fleet3.config.read_text()
    import yaml

    data = yaml.safe_load(text)
    data["hosts"][2]["port"] = 1  # nothing listens there
    cfg = fleet3.dir / "deadhost.yaml"
    cfg.write_text(yaml.safe_dump(data))
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert before == fleet3.servers_state()


def test_two_deployments_started_together_run_one_and_refuse_the_other_with_exit_5(
    fleet3: Sandbox,
) -> None:
    """Exactly one of two simultaneous deploys runs; the other exits 5 naming the holder."""
    new = "v1" if current(fleet3) == "v2" else "v2"
    cfg = plain(fleet3)
    a = fleet3.start("deploy", "-c", str(cfg), "--release", new)
    b = fleet3.start("deploy", "-c", str(cfg), "--release", new)
    outs = [p.communicate(timeout=240) for p in (a, b)]
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 5], outs
    refused = outs[[a.returncode, b.returncode].index(5)][1]
    assert "holds the lease" in refused


def test_sigint_mid_deploy_finishes_the_host_in_flight_and_exits_130(fleet3: Sandbox) -> None:
    """Ctrl-C during a switch leaves every host in the pool and says so in the journal."""
    new = "v1" if current(fleet3) == "v2" else "v2"
    cfg = fleet3.write_config("slowwarm.yaml", **{**FAST, "checks": []})
    p = fleet3.start("deploy", "-c", str(cfg), "--release", new)
    deadline = time.monotonic() + 30
    while 8 not in fleet3.servers_state().values() and 1 not in fleet3.servers_state().values():
        assert time.monotonic() < deadline, "no host was ever drained"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)  # a second Ctrl-C must not leave a host out either
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    hosts = fleet3.status(cfg)["hosts"]
    assert [h["lb_state"] for h in hosts] == ["serving"] * 3
    assert {0} == set(fleet3.servers_state().values())
    history = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)
    assert history["deployments"][-1]["outcome"] == "interrupted"
    r = fleet3.run("resume", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [h["active_release"] for h in fleet3.status(cfg)["hosts"]] == [new] * 3
    # history still says the deployment was interrupted and resumed
    last = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)["deployments"][-1]
    assert (last["outcome"], last["interrupted"], last["resumed"]) == ("deployed", True, 1)
    assert "resumed ×1" in fleet3.run("history", "-c", str(cfg)).stdout


def test_rollback_walks_every_host_back_to_its_previous_release(fleet3: Sandbox) -> None:
    """After a deployment to v2, `rollback` puts every host back on v1, in the pool. (Runs
    after the SIGINT test above, whose resumed deployment took the fleet from v1 to v2.)"""
    if current(fleet3) != "v2":
        ensure_on(fleet3, "v1")
        ensure_on(fleet3, "v2")
    r = fleet3.run("rollback", "-c", str(plain(fleet3)))
    assert r.returncode == 0, r.stdout + r.stderr
    hosts = fleet3.status()["hosts"]
    assert [h["active_release"] for h in hosts] == ["v1"] * 3
    assert [h["lb_state"] for h in hosts] == ["serving"] * 3


def test_secrets_reach_the_webhook_but_never_the_journal_the_result_or_the_output(
    fleet3: Sandbox,
) -> None:
    """A webhook URL token and signing secret from ${ENV} are used, and written nowhere."""
    received: list[tuple[str, str]] = []  # (path, event kind)

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)["kind"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token, key = "tok-8f3a1c9e77", "key-5d2b60aa41"
    try:
        ensure_on(fleet3, "v1")
        notify = [{"kind": "webhook", "url": "${IMM_HOOK_URL}", "secret": "${IMM_HOOK_KEY}"}]
        cfg = fleet3.write_config("hook.yaml", **{**FAST, "checks": [], "notify": notify})
        env = {
            "IMM_HOOK_URL": f"http://127.0.0.1:{server.server_port}/hook?token={token}",
            "IMM_HOOK_KEY": key,
            "IMMUNITY_LOG": "DEBUG",
        }
        r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--json", "hook.json", env=env)
    finally:
        server.shutdown()
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
    assert [(f"/hook?token={token}", "deployment.succeeded")] == received
    written = [
        r.stdout,
        r.stderr,
        (fleet3.dir / "hook.json").read_text(),
        *(p.read_bytes().decode("latin-1") for p in fleet3.dir.glob("journal.db*")),
    ]
    for text in written:
        assert token not in text and key not in text


def test_a_guard_rail_without_its_bar_is_rejected_before_anything_is_touched(
    fleet3: Sandbox,
) -> None:
    """`error_rate_max` without `max` exits 2 at preflight, HAProxy's view unchanged."""
    before = fleet3.servers_state()
    served = fleet3.releases_served()
    checks = [{"name": "guard", "signal": "lb", "kind": "error_rate_max"}]
    cfg = fleet3.write_config("nobar.yaml", **{**FAST, "checks": checks})
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
    assert 2 == r.returncode, r.stdout + r.stderr[-1500:]
    assert "needs `max`" in r.stderr
    assert before == fleet3.servers_state()
    assert served == fleet3.releases_served()


def test_a_revert_past_its_deadline_exits_4_naming_the_hosts_that_need_a_human(
    fleet3: Sandbox,
) -> None:
    """With timeouts.revert too short to act, exit 4 names h1; `rollback` then mends the fleet."""
    old = current(fleet3)
    cfg = fleet3.write_config(
        "norevert.yaml", **{**FAST, "timeouts": {"revert": "300ms"}, "waves": [1, "100%"]}
    )
    load = Load(fleet3, 60, "norevert-load.jsonl")
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "bad", "--json", "-")
    load.stop()
    assert 4 == r.returncode, r.stdout + r.stderr[-1500:]
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert "revert_incomplete" == result["outcome"]
    assert ["h1"] == result["needs_human"]
    assert "a human is needed for h1" in r.stdout
    assert 0 != fleet3.servers_state()["h1"]  # left out of the pool mid-revert, as reported
    r = fleet3.run("rollback", "-c", str(plain(fleet3)))
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
    assert {"h1": old, "h2": old, "h3": old} == fleet3.releases_served()
    assert {0} == set(fleet3.servers_state().values())
