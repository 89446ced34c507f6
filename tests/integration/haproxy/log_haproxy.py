"""A second real HAProxy in front of the sandbox's hosts, logging in a format of the test's choosing.

HAProxy writes its log lines itself (``log stdout format <raw|rfc3164|rfc5424>``, ``-db``,
stdout appended to a file): the tests parse what HAProxy actually wrote, never hand-made lines.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from immunity.hosts.local import port_open
from immunity.sandbox import fleet


@dataclass
class LoggingHAProxy:
    url: str
    log: Path
    socket: Path
    cfg: Path


def config(
    d: Path,
    port: int,
    servers: Mapping[str, int],
    *,
    log_line: str,
    syslog: str = "raw",
    backend: str = "be_app",
    timeout_server: str = "60s",
    twice: bool = False,
) -> str:
    """`log_line` is `option httplog` or `log-format '...'`; `syslog` the stdout format."""
    lines = [
        "global",
        f"    stats socket {d / 'admin.sock'} mode 600 level admin",
        f"    log stdout format {syslog} local0 info",
        "defaults",
        "    mode http",
        "    log global",
        "    timeout connect 2s",
        "    timeout client 30s",
        f"    timeout server {timeout_server}",
        "frontend fe_web",
        f"    bind 127.0.0.1:{port}",
        f"    {log_line}",
        # a second log target writing to the same stdout: every request logged twice
        *(["    log global", f"    log stdout format {syslog} local0 info"] if twice else []),
        f"    default_backend {backend}",
        f"backend {backend}",
        "    balance roundrobin",
        *(f"    server {n} 127.0.0.1:{p}" for n, p in servers.items()),
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def logging_haproxy(
    d: Path,
    servers: Mapping[str, int],
    *,
    log_line: str,
    syslog: str = "raw",
    backend: str = "be_app",
    timeout_server: str = "60s",
    env: Mapping[str, str] | None = None,
    twice: bool = False,
) -> Iterator[LoggingHAProxy]:
    """Start HAProxy (foreground, -db) with its stdout appended to d/access.log; stop it after."""
    d.mkdir(parents=True, exist_ok=True)
    (port,) = fleet.free_ports(1)
    cfg = d / "haproxy.cfg"
    cfg.write_text(
        config(
            d,
            port,
            servers,
            log_line=log_line,
            syslog=syslog,
            backend=backend,
            timeout_server=timeout_server,
            twice=twice,
        )
    )
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr or check.stdout
    log = d / "access.log"
    with open(log, "ab") as out, open(d / "haproxy.err", "ab") as err:
        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, (d / "haproxy.err").read_text()
            assert time.monotonic() < deadline, "haproxy did not start listening"
            time.sleep(0.02)
        yield LoggingHAProxy(f"http://127.0.0.1:{port}", log, d / "admin.sock", cfg)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def command(sock: Path, line: str) -> str:
    """One runtime API command on `sock`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(sock))
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
