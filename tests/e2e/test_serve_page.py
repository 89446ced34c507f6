"""`immunity serve` in a real headless Chromium while a deployment runs on the sandbox: the
open page follows the fleet live (no reload), and shows no secret."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from e2e_helpers import FAST, Load, Sandbox

from immunity.journal import SqliteJournal
from servers.chromium import Chromium

pytestmark = pytest.mark.slow

SECRET = "whk-s3cr3t-9f27c1"

ROWS_JS = """JSON.stringify([...document.querySelectorAll('#apps tr[data-host]')].map(
  tr => [tr.dataset.host, tr.querySelector('.release').textContent.trim(),
         tr.querySelector('.phase').textContent.trim(),
         tr.querySelector('.lb').textContent.trim()]))"""
BADGE_JS = "(document.querySelector('#apps .badge') || {textContent: ''}).textContent.trim()"


async def _other_team(path: Path) -> str:
    """Another app's finished deployment in the same journal (as a shared journal holds)."""
    j = SqliteJournal(path)
    try:
        d = await j.begin("blog", "v7", {"fallbacks": {"b1": "v6"}})
        await j.append(d.id, "host.step_started", host="b1", step="drain", data={"release": "v7"})
        await j.append(d.id, "host.step_finished", host="b1", step="drain", data={"release": "v7"})
        await j.finish(d.id, "reverted", "errors: canary 5xx 4.1% vs baseline 0%", {})
    finally:
        await j.close()
    return d.id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


@pytest.mark.timeout(300)
def test_the_open_page_follows_a_deployment_live_and_shows_no_secret(
    fleet3: Sandbox, record_property: Callable[[str, object], None]
) -> None:
    """Chromium keeps one page open while v2 rolls out: it sees hosts in deploy steps with the
    running badge, then every host on v2 serving and the deployment `deployed`, without a
    reload; screenshots of before, during and after; the webhook secret is never shown."""
    cfg = fleet3.write_config(
        "serve.yaml",
        **{
            **FAST,
            "bake": {**FAST["bake"], "min": "3s"},
            "checks": [c for c in FAST["checks"] if c["kind"] != "latency"],  # type: ignore[attr-defined]
            "notify": [{"kind": "webhook", "url": f"http://127.0.0.1:9/hook/{SECRET}"}],
        },
    )
    other_id = anyio.run(_other_team, fleet3.dir / "journal.db")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve = fleet3.start("serve", "-c", str(cfg), "--port", str(port))
    browser: Chromium | None = None
    load = Load(fleet3, 60, "serve-load.jsonl")
    shots = fleet3.dir / "serve-shots"
    shots.mkdir(exist_ok=True)
    try:
        _wait_http(base + "/", serve)
        browser = Chromium()
        browser.open(base + "/")
        before = json.loads(browser.evaluate(ROWS_JS))
        assert [r[:2] for r in before] == [["h1", "v1"], ["h2", "v1"], ["h3", "v1"]]
        browser.screenshot(shots / "1-before.png")
        deploy = fleet3.start("deploy", "-c", str(cfg), "--release", "v2", "--no-live")
        seen: list[tuple[str, list[list[str]]]] = []
        during_shot = False
        deadline = time.monotonic() + 180
        while deploy.poll() is None and time.monotonic() < deadline:
            rows = json.loads(browser.evaluate(ROWS_JS))
            badge = browser.evaluate(BADGE_JS)
            if not seen or seen[-1] != (badge, rows):
                seen.append((badge, rows))
            if not during_shot and any(r[2].startswith("deploy: ") for r in rows):
                browser.screenshot(shots / "2-during.png")
                during_shot = True
            time.sleep(0.25)
        _out, errs = deploy.communicate(timeout=30)
        assert deploy.returncode == 0, errs[-2000:]
        # the page itself (its script, no reload) comes to the end state
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = json.loads(browser.evaluate(ROWS_JS))
            if [r[1:4] for r in rows] == [["v2", "serving", "serving"]] * 3:
                break
            time.sleep(0.3)
        assert [r[1:4] for r in rows] == [["v2", "serving", "serving"]] * 3, rows
        assert (
            browser.evaluate("document.querySelector('#deployments').innerText").count("deployed")
            >= 1
        )
        browser.screenshot(shots / "3-after.png")
        badges = [b for b, _ in seen]
        phases = {r[2] for _, rows in seen for r in rows}
        assert any(b.startswith("deploying v2") for b in badges), badges
        assert {"deploy: drain", "deploy: install", "deploy: warmup"} & phases, phases
        # one host on v2 while the others are still on v1: the canary was seen
        assert any(sorted(r[1] for r in rows) == ["v1", "v1", "v2"] for _, rows in seen), [
            r for _, r in seen
        ]
        assert during_shot
        record_property("serve page states seen", len(seen))
        record_property("serve screenshots", str(shots))
        # no secret anywhere the page or the API shows
        dep_id = json.loads(httpx.get(base + "/api/deployments").text)[0]["id"]
        for path in (
            "/",
            "/api/apps",
            "/api/deployments",
            f"/api/deployments/{dep_id}",
            f"/deployments/{dep_id}",
            "/partials/apps",
        ):
            body = httpx.get(base + path).text
            assert SECRET not in body, path
        assert SECRET not in browser.evaluate("document.documentElement.outerHTML")
        # another team's deployment in the same journal is listed and opens, with its hosts
        listed = browser.evaluate("document.querySelector('#deployments').innerText")
        assert "blog" in listed and "reverted" in listed, listed
        other = httpx.get(f"{base}/api/deployments/{other_id}").json()
        assert [h["name"] for h in other["hosts"]] == ["b1"]
        assert other["deployment"]["reason"].startswith("errors: canary 5xx")
        # the deployment's page links its report, which renders
        browser.open(f"{base}/deployments/{dep_id}")
        assert browser.evaluate("document.body.innerText").count("deployed") >= 1
        href = browser.evaluate("document.querySelector('a[href$=\"/report\"]').href")
        assert href == f"{base}/deployments/{dep_id}/report"
        rep = httpx.get(href, timeout=90)  # matplotlib draws it on request
        assert rep.status_code == 200 and "<svg" in rep.text and SECRET not in rep.text
        browser.screenshot(shots / "4-deployment.png")
        # read-only: nothing but GET
        assert httpx.post(base + "/api/apps").status_code == 405
    finally:
        load.stop()
        if browser is not None:
            browser.close()
        serve.terminate()
        serve.communicate(timeout=20)


def test_serving_beyond_loopback_needs_a_token(fleet3: Sandbox, tmp_path: Path) -> None:
    """Binding a non-loopback address without a token exits 2; with one, requests without
    `Authorization: Bearer` are 401 and the right token reads the fleet."""
    r = fleet3.run("serve", "-c", str(fleet3.config), "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2 and "IMMUNITY_SERVE_TOKEN" in r.stderr
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = "tok-" + "x" * 20
    serve = fleet3.start(
        "serve",
        "-c",
        str(fleet3.config),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        env={"IMMUNITY_SERVE_TOKEN": token},
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            assert serve.poll() is None and time.monotonic() < deadline
            try:
                first = httpx.get(base + "/api/apps", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert first.status_code == 401
        assert httpx.get(base + "/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(base + "/api/apps", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()[0]["app"] == "sandbox"
        assert token not in ok.text
        # a browser gets a cookie from /?token=
        with httpx.Client(base_url=base) as c:
            assert c.get(f"/?token={token}", follow_redirects=True).status_code == 200
            assert c.get("/api/apps").status_code == 200
    finally:
        serve.terminate()
        serve.communicate(timeout=20)
