"""`IisDriver` held to the HostDriver contract against an IIS host stand-in.

No Windows runs here, so the host is a stand-in that speaks the scripts' documented wire
format (iis_scripts/_common.ps1: each script writes one compressed JSON line, `"ok": true`
plus its result or `"ok": false` and `"error"`) and keeps the state the scripts change:
sites per release (Started/Stopped), install and start times, the package share. It runs
behind the real driver's session plumbing (`session_factory`), refuses parameters a
script does not declare, and a server it does not know refuses the connection the way
`requests` does. The host's own view in the cases is the stand-in's started site.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests

from immunity.domain import HostRef
from immunity.hosts.iis import IisDriver, IisSettings, PsReply, load_script
from immunity.testing.contracts import HostDriverContract, HostHarness

APP = "shop"
SHARE = "\\\\files\\builds\\{app}\\{release}.zip"
_PARAMS = re.compile(r"^param\((.*?)^\)", re.M | re.S)
_PARAM = re.compile(r"\]\s*\$(\w+)")


@dataclass
class Site:
    state: str
    installed_at: str
    started_at: str | None = None


@dataclass
class IisHost:
    """One Windows host's IIS as the scripts see it."""

    packages: set[str]
    sites: dict[str, Site] = field(default_factory=dict)
    ticks: int = 0

    def now(self) -> str:  # Format-Time: strictly increasing, as installs are in real life
        self.ticks += 1
        t = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=self.ticks)
        return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def serving(self) -> str | None:
        started = [r for r, s in self.sites.items() if s.state == "Started"]
        assert len(started) <= 1, started
        return started[0] if started else None

    def run(self, name: str, p: Mapping[str, Any]) -> dict[str, Any]:
        if name == "list":
            items = [
                {
                    "release": r,
                    "site": f"{p['App']}-{r}",
                    "site_state": s.state,
                    "pool": f"{p['App']}-{r}",
                    "pool_state": s.state,
                    "path": f"{p['SitesRoot']}\\{p['App']}-{r}",
                    "installed_at": s.installed_at,
                    "started_at": s.started_at,
                }
                for r, s in self.sites.items()
            ]
            # ConvertTo-Json unwraps a one-element array
            return {"releases": items[0] if len(items) == 1 else items}
        if name == "check_package":
            return {"found": p["PackageSource"] in self.packages, "source": p["PackageSource"]}
        if name == "install":
            if p["Release"] not in self.sites:
                if p["PackageSource"] not in self.packages:
                    raise _Failure(
                        f"package source '{p['PackageSource']}' not found or not readable by deploy"
                    )
                self.sites[p["Release"]] = Site("Stopped", self.now())
            return {"site": f"{p['App']}-{p['Release']}", "created": []}
        if name == "stop":
            stopped = [f"{p['App']}-{r}" for r, s in self.sites.items() if s.state == "Started"]
            for s in self.sites.values():
                s.state = "Stopped"
            return {"stopped": stopped}
        if name == "start":
            mine = self.sites.get(p["Release"])
            if mine is None:
                raise _Failure(f"release '{p['Release']}' is not installed: no site")
            for r, s in self.sites.items():
                if r != p["Release"]:
                    s.state = "Stopped"
            mine.state, mine.started_at = "Started", self.now()
            return {"started": f"{p['App']}-{p['Release']}", "stopped": []}
        if name == "cleanup":
            removed = []
            for r in p["Remove"]:
                if r in self.sites and self.sites[r].state == "Started":
                    raise _Failure(f"refusing to remove release '{r}': site is started")
                self.sites.pop(r, None)
                removed.append(r)
            return {"removed": removed}
        raise AssertionError(f"no such script {name}")


class _Failure(Exception):
    """A script's `throw`, caught and written as `"ok": false` by Write-Failure."""


class StandInSession:
    def __init__(self, host: IisHost | None, server: str) -> None:
        self.host, self.server = host, server

    def invoke(self, script_name: str, script: str, parameters: Mapping[str, Any]) -> PsReply:
        if self.host is None:
            raise requests.exceptions.ConnectionError(
                f"HTTPSConnectionPool(host='{self.server}', port=5986): Connection refused"
            )
        block = _PARAMS.search(script)
        assert block is not None, script_name
        declared = set(_PARAM.findall(block.group(1)))
        assert script == load_script(script_name)
        assert set(parameters) <= declared, (script_name, set(parameters) - declared)
        try:
            result = self.host.run(script_name, parameters)
        except _Failure as exc:
            return PsReply(output=[json.dumps({"ok": False, "error": str(exc)})])
        return PsReply(output=[json.dumps({**result, "ok": True}, separators=(",", ":"))])

    def close(self) -> None:
        return None


class IisHarness(HostHarness):
    def __init__(self) -> None:
        package = SHARE.replace("{app}", APP)
        self.iis = IisHost({package.replace("{release}", r) for r in ("r1", "r2")})
        settings = IisSettings.model_validate(
            {
                "app": APP,
                "username": "CORP\\deploy",
                "password": "not-a-secret",
                "package_source": SHARE,
                "sites_root": "D:\\sites",
            }
        )
        self.driver = IisDriver(
            settings,
            base_dir=Path("/etc/immunity"),
            session_factory=lambda server: StandInSession(
                self.iis if server == "web1.example.internal" else None, server
            ),
        )
        self.host = HostRef(name="web1", address="web1.example.internal", port=443)
        self.old, self.new, self.no_package = "r1", "r2", "r9"
        self.unreachable = HostRef(name="web9", address="web9.example.internal", port=443)
        self.iis.sites["r1"] = Site("Started", self.iis.now(), self.iis.now())

    async def serving(self) -> str | None:
        return self.iis.serving()


class TestIisDriver(HostDriverContract):
    @pytest.fixture
    def harness(self) -> HostHarness:
        return IisHarness()


class Hanging(StandInSession):
    """A session whose `list` waits as a WinRM host that accepts and never answers would,
    until pywinrm's read timeout (here 3 s)."""

    def invoke(self, script_name: str, script: str, parameters: Mapping[str, Any]) -> PsReply:
        if script_name == "list":
            time.sleep(3.0)
            raise requests.exceptions.ReadTimeout("read timed out")
        return super().invoke(script_name, script, parameters)


@pytest.mark.anyio
async def test_a_read_ends_at_the_callers_deadline_and_its_session_is_not_reused() -> None:
    """`active_release` on a host that never answers ends at the caller's 0.3 s deadline,
    not at the read timeout (before: 3 s, the worker thread was waited for); the next read
    opens a new session instead of sharing the abandoned one."""
    h = IisHarness()
    opened: list[StandInSession] = []

    def factory(server: str) -> StandInSession:
        opened.append((Hanging if not opened else StandInSession)(h.iis, server))
        return opened[-1]

    driver = IisDriver(h.driver.settings, base_dir=Path("/etc/immunity"), session_factory=factory)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError), anyio.fail_after(0.3):
        await driver.active_release(h.host)
    assert time.monotonic() - t0 < 1.5
    assert await driver.installed_releases(h.host) == ["r1"]
    assert [type(s) for s in opened] == [Hanging, StandInSession]
