"""Transcript tests of the IIS driver: the exact scripts and parameters it sends over WinRM,
how it reads the replies, and how it maps pypsrp/requests errors.

A recording `PsSession` stands in for pypsrp's runspace pool; the PowerShell itself only runs
in tests/live (IMMUNITY_WINRM_HOST).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from pypsrp.exceptions import AuthenticationError, WinRMTransportError

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts.base import HostDriver
from immunity.hosts.iis import (
    IisDriver,
    IisRelease,
    IisSettings,
    PsReply,
    load_script,
    releases_to_remove,
)

PASSWORD = "S3cret-Pa55word!"
HOST = HostRef(name="web1", address="web1.example.internal", port=443, scheme="https")


def settings(**kw: Any) -> IisSettings:
    base: dict[str, Any] = {
        "app": "shop",
        "username": "CORP\\deploy",
        "password": PASSWORD,
        "package_source": "\\\\files\\builds\\{app}\\{release}.zip",
        "sites_root": "D:\\sites",
    }
    base.update(kw)
    return IisSettings.model_validate(base)


def ok(**data: Any) -> list[Any]:
    return [json.dumps({"ok": True, **data})]


def site(
    release: str, state: str = "Stopped", installed: str = "", started: str = ""
) -> dict[str, Any]:
    return {
        "release": release,
        "site": f"shop-{release}",
        "site_state": state,
        "pool_state": state,
        "installed_at": installed or None,
        "started_at": started or None,
    }


class Recorder:
    """A fake PsSession: records (server, script, parameters), answers from a script of replies."""

    def __init__(self, replies: dict[str, list[Any]]) -> None:
        self.replies = {k: list(v) for k, v in replies.items()}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.scripts: dict[str, str] = {}
        self.opened: list[str] = []
        self.closed = 0

    def factory(self, server: str) -> Recorder.Session:
        self.opened.append(server)
        return Recorder.Session(self, server)

    class Session:
        def __init__(self, rec: Recorder, server: str) -> None:
            self.rec, self.server = rec, server

        def invoke(self, script_name: str, script: str, parameters: Mapping[str, Any]) -> PsReply:
            self.rec.calls.append((self.server, script_name, dict(parameters)))
            self.rec.scripts[script_name] = script
            queue = self.rec.replies.get(script_name)
            if not queue:
                raise AssertionError(f"unexpected script {script_name}")
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, PsReply):
                return reply
            return PsReply(output=reply)

        def close(self) -> None:
            self.rec.closed += 1

    def names(self) -> list[str]:
        return [name for _, name, _ in self.calls]


def driver(rec: Recorder, **kw: Any) -> IisDriver:
    return IisDriver(settings(**kw), base_dir=Path("/etc/immunity"), session_factory=rec.factory)


def run(coro: Any) -> Any:
    async def main() -> Any:
        return await coro

    return anyio.run(main)


def test_driver_satisfies_the_host_driver_protocol() -> None:
    """IisDriver is a HostDriver (runtime-checkable Protocol)."""
    assert isinstance(driver(Recorder({})), HostDriver)


def test_install_cleans_up_then_installs_with_every_parameter() -> None:
    """install lists the releases, removes none when under keep_releases, then runs install.ps1 with the rendered package path."""
    rec = Recorder(
        {"list": [ok(releases=[site("1.0", "Stopped")])], "install": [ok(site="shop-1.1")]}
    )
    run(driver(rec).install(HOST, "1.1"))
    assert rec.calls == [
        ("web1.example.internal", "list", {"App": "shop", "SitesRoot": "D:\\sites"}),
        (
            "web1.example.internal",
            "install",
            {
                "App": "shop",
                "Release": "1.1",
                "PackageSource": "\\\\files\\builds\\shop\\1.1.zip",
                "SitesRoot": "D:\\sites",
                "BindingPort": 443,
                "BindingProtocol": "https",
                "BindingHostname": "",
                "CertificateThumbprint": "",
                "CertificateStore": "My",
                "ManagedRuntimeVersion": "v4.0",
            },
        ),
    ]


def test_install_removes_releases_beyond_keep_but_never_active_or_previous() -> None:
    """With keep_releases 3, installing a 5th release removes the oldest ones but keeps the active and the previously started one."""
    listing = [
        site("1.0", installed="2024-01-01T00:00:00.000Z", started="2024-01-05T00:00:00.000Z"),
        site("1.1", installed="2024-01-02T00:00:00.000Z"),
        site("1.2", installed="2024-01-03T00:00:00.000Z"),
        site(
            "1.3",
            "Started",
            installed="2024-01-04T00:00:00.000Z",
            started="2024-01-06T00:00:00.000Z",
        ),
    ]
    rec = Recorder(
        {"list": [ok(releases=listing)], "cleanup": [ok(removed=["1.1", "1.2"])], "install": [ok()]}
    )
    run(driver(rec).install(HOST, "1.4"))
    assert rec.names() == ["list", "cleanup", "install"]
    assert rec.calls[1][2] == {"App": "shop", "SitesRoot": "D:\\sites", "Remove": ["1.1", "1.2"]}


def test_releases_to_remove_keeps_the_newest_and_the_protected() -> None:
    """The pure cleanup rule keeps `keep` releases: active, previous and protected first, then the newest."""
    t = "2024-01-0{}T00:00:00.000Z"
    rel = [
        IisRelease("a", "Stopped", installed_at=_t(t.format(1)), started_at=_t(t.format(9))),
        IisRelease("b", "Stopped", installed_at=_t(t.format(2))),
        IisRelease("c", "Stopped", installed_at=_t(t.format(3))),
        IisRelease("d", "Stopped", installed_at=_t(t.format(4))),
    ]
    assert releases_to_remove(rel, keep=2, protect={"b"}) == ["c", "d"]
    assert releases_to_remove(rel, keep=3, protect=set()) == ["b"]
    assert releases_to_remove(rel, keep=9, protect=set()) == []


def test_start_sends_release_and_the_callers_remaining_deadline() -> None:
    """start runs start.ps1 with TimeoutSeconds taken from the caller's deadline, not a constant."""
    rec = Recorder({"start": [ok(started="shop-1.1", stopped=["shop-1.0"])]})
    drv = driver(rec)

    async def main() -> None:
        with anyio.fail_after(30):
            await drv.start(HOST, "1.1")

    anyio.run(main)
    ((_, name, params),) = rec.calls
    assert name == "start"
    assert {k: v for k, v in params.items() if k != "TimeoutSeconds"} == {
        "App": "shop",
        "Release": "1.1",
        "SitesRoot": "D:\\sites",
    }
    assert 20 < params["TimeoutSeconds"] <= 28


def test_stop_without_deadline_uses_wait_timeout() -> None:
    """stop runs stop.ps1 once, bounded by wait_timeout when the caller set no deadline."""
    rec = Recorder({"stop": [ok(stopped=["shop-1.0"])]})
    run(driver(rec, wait_timeout="45s").stop(HOST))
    assert rec.calls == [("web1.example.internal", "stop", {"App": "shop", "TimeoutSeconds": 45.0})]


def test_switch_transcript_is_list_stop_list_install_start() -> None:
    """A host's switch (active, stop, install, start) sends exactly these scripts in order over one session."""
    rec = Recorder(
        {
            "list": [ok(releases=[site("1.0", "Started")]), ok(releases=[site("1.0")])],
            "stop": [ok(stopped=["shop-1.0"])],
            "install": [ok(site="shop-1.1", created=["folder", "pool", "site"])],
            "start": [ok(started="shop-1.1", stopped=[])],
        }
    )
    drv = driver(rec)

    async def main() -> str | None:
        active = await drv.active_release(HOST)
        await drv.stop(HOST)
        await drv.install(HOST, "1.1")
        await drv.start(HOST, "1.1")
        await drv.aclose()
        return active

    assert anyio.run(main) == "1.0"
    assert rec.names() == ["list", "stop", "list", "install", "start"]
    assert rec.opened == ["web1.example.internal"]
    assert rec.closed == 1


def test_installed_releases_are_oldest_first_and_active_is_the_started_site() -> None:
    """Replies are parsed: releases sorted by install time, the started site is the active release."""
    listing = [
        site("2.0", "Started", installed="2024-02-01T00:00:00.000Z"),
        site("1.9", installed="2024-01-01T00:00:00.000Z"),
    ]
    rec = Recorder({"list": [ok(releases=listing)]})
    drv = driver(rec)
    assert run(drv.installed_releases(HOST)) == ["1.9", "2.0"]
    assert run(drv.active_release(HOST)) == "2.0"


def test_single_release_object_and_no_started_site_are_understood() -> None:
    """A one-element array unwrapped by PowerShell still parses; no started site means no active release."""
    rec = Recorder({"list": [ok(releases=site("1.0"))]})
    drv = driver(rec)
    assert run(drv.installed_releases(HOST)) == ["1.0"]
    assert run(drv.active_release(HOST)) is None


def test_two_started_sites_is_a_host_error() -> None:
    """Two started `<app>-*` sites cannot both own the binding; the driver says so instead of guessing."""
    rec = Recorder({"list": [ok(releases=[site("1.0", "Started"), site("1.1", "Started")])]})
    with pytest.raises(HostError, match="several started sites"):
        run(driver(rec).active_release(HOST))


def test_winrm_host_comes_from_meta_when_given() -> None:
    """HostRef.meta["winrm_host"] overrides the address for the WinRM connection."""
    rec = Recorder({"stop": [ok(stopped=[])]})
    host = HostRef(name="web2", address="10.0.0.12", meta={"winrm_host": "web2.corp.example"})
    run(driver(rec).stop(host))
    assert rec.calls[0][0] == "web2.corp.example"


def test_script_failure_reply_becomes_host_error_with_its_reason() -> None:
    """`{"ok": false, "error": ...}` from a script is a HostError naming the host and the reason."""
    rec = Recorder(
        {"start": [[json.dumps({"ok": False, "error": "release '9' is not installed"})]]}
    )
    with pytest.raises(HostError) as info:
        run(driver(rec).start(HOST, "9"))
    assert info.value.host == "web1"
    assert "release '9' is not installed" in info.value.message


def test_output_that_is_not_json_is_a_host_error_with_the_error_stream() -> None:
    """A script that dies before printing JSON is reported with its error records."""
    rec = Recorder(
        {
            "stop": [
                PsReply(output=[], errors=["Add-Type: cannot load Microsoft.Web.Administration"])
            ]
        }
    )
    with pytest.raises(HostError, match=r"Microsoft\.Web\.Administration"):
        run(driver(rec).stop(HOST))


def test_bad_release_name_is_refused_before_any_call() -> None:
    """A release name that is not a safe site name never reaches the host."""
    rec = Recorder({})
    with pytest.raises(HostError, match="not usable"):
        run(driver(rec).install(HOST, "1.0; Remove-Item C:\\"))
    with pytest.raises(PreflightError):
        run(driver(rec).check_release("../../x"))
    assert rec.calls == []


def test_unreachable_host_is_a_preflight_error_with_a_hint() -> None:
    """A refused connection at preflight names host:port and says what to check."""
    err = requests.exceptions.ConnectionError(
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    rec = Recorder({"list": [err]})
    with pytest.raises(PreflightError) as info:
        run(driver(rec).preflight([HOST]))
    assert info.value.message.startswith("iis: cannot reach WinRM on web1.example.internal:5986: ")
    assert info.value.hint is not None and "listener" in info.value.hint


def test_preflight_checks_all_hosts_and_names_every_failing_one() -> None:
    """Hosts are checked concurrently; one PreflightError names the first failure and lists the rest."""
    hosts = [HostRef(name=f"web{i}", address=f"web{i}.example.internal") for i in range(1, 5)]

    down = {"web2.example.internal", "web4.example.internal"}

    class Flaky(Recorder):
        def factory(self, server: str) -> Recorder.Session:
            self.opened.append(server)
            if server in down:
                return Recorder.Session(
                    Recorder({"list": [requests.exceptions.ConnectionError("refused")]}), server
                )
            return Recorder.Session(Recorder({"list": [ok(releases=[])]}), server)

    rec = Flaky({})
    drv = IisDriver(settings(), base_dir=Path("."), session_factory=rec.factory)
    with pytest.raises(PreflightError) as info:
        run(drv.preflight(hosts))
    assert info.value.message.startswith("iis: cannot reach WinRM on web2.example.internal:5986")
    assert info.value.message.endswith("(and 1 more host(s) failing: web4)")
    assert sorted(rec.opened) == [h.address for h in hosts]


def test_broken_session_is_dropped_and_reopened() -> None:
    """After a transport error the next call opens a fresh session."""
    rec = Recorder({"stop": [requests.exceptions.ConnectionError("reset"), ok(stopped=[])]})
    drv = driver(rec)
    with pytest.raises(HostError):
        run(drv.stop(HOST))
    run(drv.stop(HOST))
    assert rec.opened == ["web1.example.internal", "web1.example.internal"]
    assert rec.closed == 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.SSLError("certificate verify failed"), "TLS handshake"),
        (requests.exceptions.ReadTimeout("read timed out"), "did not answer in time"),
        (AuthenticationError("bad creds"), "rejected the credentials of CORP\\deploy"),
        (WinRMTransportError("http", 401, ""), "rejected the credentials"),
        (WinRMTransportError("http", 500, "boom"), "answered HTTP 500"),
        (OSError("no route to host"), "cannot reach WinRM"),
    ],
)
def test_foreign_errors_map_to_host_error(exc: Exception, expected: str) -> None:
    """Each pypsrp/requests error becomes one HostError with a readable cause and a hint."""
    rec = Recorder({"stop": [exc]})
    with pytest.raises(HostError) as info:
        run(driver(rec).stop(HOST))
    assert expected in info.value.message
    assert info.value.hint
    assert info.value.__cause__ is exc


def test_check_release_asks_the_first_preflighted_host_for_the_package() -> None:
    """After preflight, check_release tests the rendered package path on a host and rejects a missing one."""
    rec = Recorder({"list": [ok(releases=[])], "check_package": [ok(found=False, source="x")]})
    drv = driver(rec)
    run(drv.preflight([HOST]))
    with pytest.raises(PreflightError, match="not found"):
        run(drv.check_release("7.0"))
    assert rec.calls[-1][1:] == (
        "check_package",
        {"PackageSource": "\\\\files\\builds\\shop\\7.0.zip"},
    )


def test_password_never_appears_in_logs_errors_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    """The password is not in debug logs, error messages, settings repr or the parameters sent."""
    caplog.set_level(logging.DEBUG)
    rec = Recorder(
        {
            "list": [ok(releases=[])],
            "install": [ok()],
            "start": [AuthenticationError("denied")],
        }
    )
    drv = driver(rec)
    run(drv.install(HOST, "1.1"))
    with pytest.raises(HostError) as info:
        run(drv.start(HOST, "1.1"))
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(info.value.to_dict())
    assert PASSWORD not in repr(drv.settings)
    assert PASSWORD not in json.dumps([c[2] for c in rec.calls])
    assert "iis web1.example.internal: install" in caplog.text


def test_settings_demand_credentials_for_ntlm_and_reject_bad_thumbprints() -> None:
    """ntlm without a password and a malformed certificate thumbprint are config errors."""
    with pytest.raises(ValueError, match="needs username and password"):
        settings(auth="ntlm", password=None)
    with pytest.raises(ValueError):
        settings(certificate_thumbprint="not-hex")
    assert settings(auth="kerberos", username=None, password=None).username is None


def test_ca_bundle_path_is_resolved_against_the_config_folder() -> None:
    """cert_validation given as a path is the CA bundle, relative to the config file's folder."""
    drv = IisDriver(settings(cert_validation="certs/ca.pem"), base_dir=Path("/etc/immunity"))
    assert drv._cert_validation == "/etc/immunity/certs/ca.pem"


_PARAM_BLOCK = re.compile(r"^param\((.*?)^\)", re.M | re.S)


@pytest.mark.parametrize("name", ["list", "install", "stop", "start", "cleanup", "check_package"])
def test_each_script_declares_params_first_and_includes_the_helpers(name: str) -> None:
    """Every script opens with its param block (values are bound, never pasted) and gets the helpers."""
    text = load_script(name)
    code = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert code[0] == "param("
    assert not re.search(r"^#include", text, re.M)
    assert "function Write-Result" in text


@pytest.mark.parametrize("script", ["list", "install", "stop", "start", "cleanup", "check_package"])
def test_parameters_sent_are_exactly_those_the_script_declares(script: str) -> None:
    """The names the driver binds match the script's param block, so PowerShell never rejects a call."""
    listing = [site("1.0", "Started", started="2024-01-01T00:00:00.000Z")] + [
        site(f"0.{i}", installed=f"2023-01-0{i}T00:00:00.000Z") for i in range(1, 6)
    ]
    rec = Recorder(
        {
            "list": [ok(releases=listing)],
            "install": [ok()],
            "stop": [ok(stopped=[])],
            "start": [ok()],
            "cleanup": [ok(removed=[])],
            "check_package": [ok(found=True)],
        }
    )
    drv = driver(rec)

    async def main() -> None:
        await drv.preflight([HOST])
        await drv.check_release("1.1")
        await drv.install(HOST, "1.1")
        await drv.stop(HOST)
        await drv.start(HOST, "1.1")

    anyio.run(main)
    block = _PARAM_BLOCK.search(load_script(script))
    assert block is not None
    declared = set(re.findall(r"\$([A-Za-z]+)", block.group(1)))
    sent = [params for _, name, params in rec.calls if name == script]
    assert sent, f"{script} was never called"
    for params in sent:
        assert set(params) <= declared
    mandatory = set(
        re.findall(r"Mandatory = \$true\)\]\[[a-z\[\]]+\]\$([A-Za-z]+)", block.group(1))
    )
    assert mandatory <= set(sent[0])


def _t(value: str) -> Any:
    from immunity.hosts.iis import _time

    return _time(value)


def test_a_release_name_with_a_trailing_newline_is_refused() -> None:
    """`$` would accept "v1\\n": the name check is a full match, and so is the script's."""
    rec = Recorder({})
    with pytest.raises(HostError, match="not usable"):
        run(driver(rec).install(HOST, "v1\n"))
    assert rec.calls == []
    common = Path(__file__).resolve().parents[2] / "src/immunity/hosts/iis_scripts/_common.ps1"
    assert "-notmatch '\\A[A-Za-z0-9_.\\-]+\\z'" in common.read_text()
