"""The IIS driver through the real pypsrp stack against loopback endpoints that misbehave:
a closed port and a WinRM lookalike that rejects every login. No Windows needed."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from immunity.domain import HostRef
from immunity.errors import PreflightError
from immunity.hosts.iis import IisDriver, IisSettings

PASSWORD = "Pa55-never-logged"
LOCAL = HostRef(name="web1", address="127.0.0.1")


class _Reject(http.server.BaseHTTPRequestHandler):
    """Answers every WS-Man POST with 401, as WinRM does for bad credentials."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Reject.seen.append(self.headers.get("Authorization", "")[:9])
        self.send_response(401)
        self.send_header("WWW-Authenticate", "Negotiate")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rejecting_winrm() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Reject)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _driver(**kw: Any) -> IisDriver:
    settings = IisSettings.model_validate(
        {
            "app": "shop",
            "username": "deploy",
            "password": PASSWORD,
            "package_source": "\\\\files\\{release}.zip",
            "sites_root": "D:\\sites",
            "connection_timeout": "5s",
            **kw,
        }
    )
    return IisDriver(settings, base_dir=Path("."))


def test_closed_port_is_a_preflight_error_naming_host_and_port() -> None:
    """Nothing listening on the WinRM port: preflight says it cannot reach HOST:PORT and what to check."""
    port = _closed_port()
    drv = _driver(port=port)
    with pytest.raises(PreflightError) as info:
        anyio.run(drv.preflight, [LOCAL])
    assert info.value.message.startswith(f"iis: cannot reach WinRM on 127.0.0.1:{port}: ")
    assert info.value.hint is not None and "firewall" in info.value.hint
    anyio.run(drv.aclose)


def test_rejected_login_is_a_credentials_error_and_the_password_is_never_logged(
    rejecting_winrm: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 from WinRM names the user and auth method; pypsrp and immunity debug logs hold no password."""
    caplog.set_level(logging.DEBUG)
    drv = _driver(port=rejecting_winrm, ssl=False, auth="ntlm")
    with pytest.raises(PreflightError) as info:
        anyio.run(drv.preflight, [LOCAL])
    anyio.run(drv.aclose)
    assert info.value.message == (
        f"iis: WinRM on 127.0.0.1:{rejecting_winrm} rejected the credentials of deploy (ntlm)"
    )
    assert _Reject.seen and _Reject.seen[-1].startswith("Negotiate")
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(info.value.to_dict())
