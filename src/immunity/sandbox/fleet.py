"""The local fleet: a real HAProxy in front of N local hosts running the sample app.

Layout of a sandbox folder::

    DIR/immunity.yaml                 config for `immunity deploy` against this fleet
    DIR/releases/<name>.json          release manifests (error_rate, latency_ms, cold_start_s,
                                      errors_after_s, errors_from_file)
    DIR/hosts/<host>/...              one folder per host (see immunity.hosts.local)
    DIR/haproxy/haproxy.cfg           balancer config; runtime API at DIR/haproxy/admin.sock
    DIR/haproxy/access.log            HAProxy's stdout: one JSON line per request (+ state lines)
    DIR/haproxy/haproxy.log           HAProxy's stderr
    DIR/pids/haproxy.pid              HAProxy (apps keep their pid in hosts/<host>/app.pid)

HAProxy runs in the foreground mode (``-db``) as one detached process with ``log stdout
format raw``, its stdout appended to access.log: no syslog receiver to keep alive. Every
process is detached (own session) so the fleet outlives the command that made it, and is
stopped by pid after its command line is checked (`teardown`).

The API is synchronous and blocks for a second or two; call it from async code through
``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from immunity.clients.haproxy import parse_stat_csv
from immunity.errors import BalancerError, HostError, PreflightError
from immunity.hosts.local import (
    APP_MODULE,
    app_command,
    port_open,
    process_matches,
    read_pid,
    spawn_detached,
    terminate_sync,
    write_atomic,
)

BACKEND = "be_app"
LOG_FORMAT = (
    '{"ts":%Ts.%ms,"be":"%b","srv":"%s","st":%ST,"Th":%Th,"Ti":%Ti,"TR":%TR,"Tw":%Tw,'
    '"Tc":%Tc,"Tr":%Tr,"Ta":%Ta,"Tt":%Tt,"bytes":%B,"term":"%tsc"}'
)
LOG_FORMATS = ("json", "httplog")
"""The access-log line formats `sandbox up --log-format` writes: `json` (`LOG_FORMAT` above,
HAProxy's `log-format`) or `httplog` (HAProxy's standard `option httplog` line); the
`haproxy` signal reads either (its `log_format`)."""
# AF_UNIX paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class SandboxInfo:
    """Where a running sandbox answers."""

    dir: Path
    url: str
    config_path: Path
    balancer_port: int
    host_ports: dict[str, int] = field(default_factory=dict)
    socket: Path = Path()
    access_log: Path = Path()


def _paths(d: Path) -> dict[str, Path]:
    return {
        "releases": d / "releases",
        "hosts": d / "hosts",
        "haproxy": d / "haproxy",
        "pids": d / "pids",
        "cfg": d / "haproxy" / "haproxy.cfg",
        "socket": d / "haproxy" / "admin.sock",
        "access_log": d / "haproxy" / "access.log",
        "haproxy_log": d / "haproxy" / "haproxy.log",
        "haproxy_pid": d / "pids" / "haproxy.pid",
        "config": d / "immunity.yaml",
        "info": d / "sandbox.json",
    }


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def add_release(
    dir: str | os.PathLike[str],
    name: str,
    error_rate: float = 0.0,
    latency_ms: float = 0.0,
    cold_start_s: float = 0.0,
    errors_after_s: float = 0.0,
    errors_from_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Write `DIR/releases/<name>.json` and return its path.

    `errors_after_s`: the release's errors begin that many seconds after its process started
    on a host (a late-onset fault); 0 means from the first request. `errors_from_file`: they
    begin only once that file exists (a fault started by creating it); a relative path is
    taken from the current directory.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"expected a release name such as v2, got {name!r}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"expected error_rate in [0, 1], got {error_rate}")
    if latency_ms < 0 or cold_start_s < 0 or errors_after_s < 0:
        raise ValueError("expected latency_ms, cold_start_s and errors_after_s >= 0")
    folder = Path(dir) / "releases"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    manifest = {
        "name": name,
        "error_rate": error_rate,
        "latency_ms": latency_ms,
        "cold_start_s": cold_start_s,
        "errors_after_s": errors_after_s,
        "errors_from_file": str(Path(errors_from_file).resolve()) if errors_from_file else None,
    }
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def haproxy_config(
    socket_path: Path, port: int, servers: dict[str, int], log_format: str = "json"
) -> str:
    """haproxy.cfg for the sandbox; `log_format` (`LOG_FORMATS`) picks the access-log line."""
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    log_line = f"    log-format '{LOG_FORMAT}'" if log_format == "json" else "    option httplog"
    lines = [
        "# Written by `immunity sandbox up`.",
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    stats timeout 30s",
        "    log stdout format raw local0 info",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option redispatch",
        "    retries 2",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout queue 10s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout check 2s",
        "",
        "frontend fe_web",
        f"    bind 127.0.0.1:{port}",
        log_line,
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    default-server check inter 250ms fall 2 rise 1 weight 100",
    ]
    lines += [f"    server {name} 127.0.0.1:{p}" for name, p in servers.items()]
    return "\n".join(lines) + "\n"


def immunity_yaml(
    app: str,
    servers: dict[str, int],
    log_format: str = "json",
    *,
    lb_port: int | None = None,
    impact: bool = False,
) -> str:
    """The sandbox's immunity.yaml. With `lb_port`, an `impact` block through the balancer
    (`impact`: on; otherwise written commented out, with why and how to turn it on)."""
    hosts = "\n".join(
        f"  - name: {name}\n    address: 127.0.0.1\n    port: {p}" for name, p in servers.items()
    )
    return _config_text(app, hosts, log_format) + (
        _impact_text(lb_port, impact) if lb_port is not None else ""
    )


def _impact_text(lb_port: int, on: bool) -> str:
    why = (
        "# What customers saw (the report's section of that name, and `impact` in the JSON\n"
        "# result): a few requests/s through the balancer for the whole deployment, cut at\n"
        "# each phase (before, each wave, its bake, the revert, after).\n"
    )
    block = f"impact:\n  url: http://127.0.0.1:{lb_port}\n  rps: 5\n  before: 5s\n  after: 5s\n"
    if on:
        return why + block
    return (
        why + "# Off here: its requests go through the balancer, so the `lb` signal counts them\n"
        "# as customers' and a quiet hour would not be quiet. `immunity sandbox up --impact`\n"
        "# (and `immunity demo`) write it on; or remove the `# ` below:\n"
        + "".join(f"# {line}\n" for line in block.splitlines())
    )


def _config_text(app: str, hosts: str, log_format: str) -> str:
    return f"""\
# Written by `immunity sandbox up`: deploy to this local fleet with
#   immunity deploy -c immunity.yaml --release <name>
app: {app}
hosts:
{hosts}
balancer:
  kind: haproxy
  socket: haproxy/admin.sock
  backend: {BACKEND}
driver:
  kind: local
  root: hosts
  releases: releases
signals:
  - kind: haproxy
    name: lb
    socket: haproxy/admin.sock
    backend: {BACKEND}
    access_log: haproxy/access.log
    log_format: {log_format}
checks:
  - name: errors
    signal: lb
    kind: errors
  - name: latency
    signal: lb
    kind: latency
    # p99 needs ~2,500 baseline requests to freeze and many more to certify: at sandbox
    # traffic it is watched by the absolute guard below instead
    quantiles: [0.5, 0.9]
  # a grossly slow release; the latency check above catches regressions against the
  # baseline. On probe traffic, timed from immunity's process (which waits for CPU on a busy
  # laptop), it passes under the bar but fails only when the canary is also slower than the
  # baseline there: the probe's own slowness does not fail a release (docs/judging.md).
  - name: p99-guard
    signal: lb
    kind: latency_max
    quantile: 0.99
    max: 1000
  - name: error-rate-guard
    signal: lb
    kind: error_rate_max
    max: 2%
waves: [1, "50%", "100%"]
max_unavailable: 1
warmup:
  path: /
  consecutive: 5
  latency_bar: 100ms
bake:
  min: 20s
  max: 90s
# Keep watching after the last wave: the last host stays on the old release meanwhile (the
# holdback, the baseline of the comparisons) and is switched last. A fault that starts late,
# after the waves passed, is caught here and reverts the whole fleet. Unset, the guard lasts
# half of bake.max (45 s here); `duration: 0` turns it off.
guard:
  duration: 20s
  holdback: true
judge:
  # A canary proven under 1% 5xx passes even when the baseline has no errors at all (at
  # the probe's 40 requests/s that takes about 15 s of error-free requests).
  error_floor: 1%
# With few or no customers (no `immunity sandbox load` running), immunity sends its own
# identical requests straight to the canary and baseline hosts during each bake and judges
# them with the same checks; it stops while customers bring a canary host what the checks
# need to decide by bake.max (derived from them: about 41 requests/s in the first wave here;
# each look's journal entry gives the figure). It sends 40 requests/s per host: a release
# with 5% errors is caught about 15 s after its first canary takes traffic (at 12/s it took
# 20-31 s, at 25/s 16-24 s: the checks' bar is high, alpha being shared by every bake, each
# check's probe twin and its look at bake.max).
probe:
  paths: [/]
  rate: 40
  timeout: 2s
journal:
  path: journal.db
"""


def haproxy_command(d: Path, line: str, timeout: float = 2.0) -> str:
    """One runtime API command, synchronously (for the sandbox's own waits)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(_paths(d)["socket"]))
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def is_running(dir: str | os.PathLike[str]) -> bool:
    """True when this sandbox's HAProxy process is alive."""
    d = Path(dir).resolve()
    pid = read_pid(_paths(d)["haproxy_pid"])
    return pid is not None and process_matches(pid, ["haproxy", str(d)])


def create_sandbox(
    dir: str | os.PathLike[str],
    hosts: int = 3,
    base_port: int | None = None,
    *,
    app: str = "sandbox",
    ready_timeout: float = 30.0,
    log_format: str = "json",
    impact: bool = False,
) -> SandboxInfo:
    """Create and start a fleet of `hosts` local hosts on release v1 behind HAProxy.

    immunity.yaml's `impact` block (customers' view through the balancer, in every report) is
    on with `impact`, else written commented out.

    Ports: the balancer on `base_port` and hosts on the next ones, or free ports when None.
    HAProxy writes its access log as `log_format` lines (`LOG_FORMATS`: json or httplog);
    the config's `haproxy` signal names that format. Returns once HAProxy calls every server
    UP. Raises PreflightError for a bad folder, a sandbox already running there or an
    unknown `log_format`.
    """
    if log_format not in LOG_FORMATS:
        raise PreflightError(
            f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}",
            hint="--log-format json (the default) or --log-format httplog",
        )
    d = Path(dir).absolute()
    if hosts < 1:
        raise PreflightError(f"expected at least 1 host, got {hosts}")
    if not d.parent.is_dir():
        raise PreflightError(
            f"cannot create {d}: its parent folder {d.parent} does not exist",
            hint="create the parent folder first, or pick another --dir",
        )
    d.mkdir(exist_ok=True)
    d = d.resolve()
    p = _paths(d)
    if len(str(p["socket"])) > _MAX_SOCKET_PATH:
        raise PreflightError(
            f"sandbox folder path too long for a unix socket: {p['socket']}",
            hint="use a shorter --dir path",
        )
    if is_running(d):
        raise PreflightError(
            f"a sandbox is already running in {d}",
            hint=f"stop it with `immunity sandbox down --dir {d}`",
        )
    if shutil.which("haproxy") is None:
        raise PreflightError(
            "haproxy is not installed (not on PATH)", hint="apt-get install -y haproxy"
        )

    names = [f"h{i}" for i in range(1, hosts + 1)]
    for key in ("releases", "hosts", "haproxy", "pids"):
        p[key].mkdir(parents=True, exist_ok=True)
    v1 = p["releases"] / "v1.json"
    if not v1.is_file():
        add_release(d, "v1")
    # Free ports are picked by binding port 0 and letting go: another process may take one
    # before our servers bind it. With picked ports a failed start is retried on new ones.
    tries = 3 if base_port is None else 1
    for attempt in range(1, tries + 1):
        try:
            return _start(d, p, names, app, base_port, v1, ready_timeout, log_format, impact)
        except (BalancerError, HostError):
            if attempt == tries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _start(
    d: Path,
    p: dict[str, Path],
    names: list[str],
    app: str,
    base_port: int | None,
    v1: Path,
    ready_timeout: float,
    log_format: str = "json",
    impact: bool = False,
) -> SandboxInfo:
    n = len(names)
    ports = free_ports(n + 1) if base_port is None else list(range(base_port, base_port + n + 1))
    lb_port, servers = ports[0], dict(zip(names, ports[1:], strict=True))
    busy = [str(q) for q in ports if port_open("127.0.0.1", q)]
    if busy:
        raise PreflightError(
            f"ports already in use: {', '.join(busy)}", hint="pick another --base-port"
        )
    try:
        for name, port in servers.items():
            _start_host(d, name, port, v1)
        _start_haproxy(d, lb_port, servers, log_format)
        text = immunity_yaml(app, servers, log_format, lb_port=lb_port, impact=impact)
        write_atomic(p["config"], text)
        info = SandboxInfo(
            dir=d,
            url=f"http://127.0.0.1:{lb_port}",
            config_path=p["config"],
            balancer_port=lb_port,
            host_ports=servers,
            socket=p["socket"],
            access_log=p["access_log"],
        )
        write_atomic(
            p["info"],
            json.dumps({"url": info.url, "balancer_port": lb_port, "hosts": servers}, indent=2)
            + "\n",
        )
        _wait_all_up(d, names, ready_timeout)
    except BaseException:
        teardown(d)
        raise
    return info


def read_info(dir: str | os.PathLike[str]) -> SandboxInfo:
    """The `SandboxInfo` of an existing sandbox folder."""
    d = Path(dir).resolve()
    p = _paths(d)
    try:
        data = json.loads(p["info"].read_text())
    except (OSError, ValueError) as exc:
        raise PreflightError(
            f"{d} is not a sandbox folder (no readable sandbox.json)",
            hint="create one with `immunity sandbox up --dir DIR`",
        ) from exc
    return SandboxInfo(
        dir=d,
        url=str(data["url"]),
        config_path=p["config"],
        balancer_port=int(data["balancer_port"]),
        host_ports={str(k): int(v) for k, v in dict(data["hosts"]).items()},
        socket=p["socket"],
        access_log=p["access_log"],
    )


def _start_host(d: Path, name: str, port: int, manifest: Path) -> None:
    folder = d / "hosts" / name
    installed = folder / "releases" / manifest.stem / "release.json"
    installed.parent.mkdir(parents=True, exist_ok=True)
    if not installed.is_file():
        write_atomic(installed, manifest.read_text())
    write_atomic(folder / "active", manifest.stem + "\n")
    proc = spawn_detached(app_command(name, "127.0.0.1", port, installed), folder / "app.log")
    write_atomic(folder / "app.pid", f"{proc.pid}\n")


def _start_haproxy(d: Path, port: int, servers: dict[str, int], log_format: str = "json") -> None:
    p = _paths(d)
    write_atomic(p["cfg"], haproxy_config(p["socket"], port, servers, log_format))
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(p["cfg"])], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise BalancerError(
            f"haproxy rejected {p['cfg']}: {(check.stderr or check.stdout).strip()[:500]}",
            adapter="haproxy",
        )
    with contextlib.suppress(FileNotFoundError):
        p["socket"].unlink()
    with open(p["access_log"], "ab") as out, open(p["haproxy_log"], "ab") as err:
        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(p["cfg"])],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    write_atomic(p["haproxy_pid"], f"{proc.pid}\n")


def _running(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def _wait_all_up(d: Path, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer from the runtime API"
    hpid = read_pid(_paths(d)["haproxy_pid"])
    while time.monotonic() < deadline:
        # Only "has it ended?" here: these are our own children of a moment ago, and their
        # command line can read empty while the system is busy, which is not an exit.
        if hpid is None or not _running(hpid):
            log = _paths(d)["haproxy_log"]
            raise BalancerError(
                f"haproxy exited at start: {log.read_text(errors='replace').strip()[-500:]}",
                adapter="haproxy",
            )
        for name in names:
            folder = d / "hosts" / name
            pid = read_pid(folder / "app.pid")
            if pid is None or not _running(pid):
                tail = (folder / "app.log").read_text(errors="replace").strip()[-500:]
                raise HostError(
                    f"app on {name} exited at start: {tail}", adapter="local", host=name
                )
        try:
            rows = parse_stat_csv(haproxy_command(d, f"show stat {BACKEND} 4 -1"))
        except OSError as exc:
            last = f"runtime API: {exc}"
        else:
            status = {r.name: r.status for r in rows}
            if all(status.get(n) == "UP" for n in names):
                return
            last = ", ".join(f"{n}={status.get(n, '?')}" for n in names)
        time.sleep(0.05)
    raise BalancerError(
        f"sandbox servers not all UP after {timeout:.0f}s: {last}", adapter="haproxy"
    )


def _sandbox_processes(d: Path) -> list[psutil.Process]:
    """Processes whose command line names this sandbox folder (haproxy and apps)."""
    needle = str(d) + os.sep
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if needle in cmd and ("haproxy" in cmd or APP_MODULE in cmd):
            out.append(proc)
    return out


def teardown(dir: str | os.PathLike[str], grace: float = 3.0) -> list[int]:
    """Stop every process of the sandbox in `dir` and wait until they are gone.

    Reads pids from DIR/pids/ and every host's app.pid, then sweeps for any process whose
    command line names the folder. Files are kept (logs, journal). Returns the stopped pids.
    """
    d = Path(dir).resolve()
    p = _paths(d)
    targets: list[tuple[int, list[str]]] = []
    pid = read_pid(p["haproxy_pid"])
    if pid is not None:
        targets.append((pid, ["haproxy", str(d)]))
    for pidfile in sorted(p["pids"].glob("*.pid")) if p["pids"].is_dir() else []:
        other = read_pid(pidfile)
        if other is not None and other != pid:
            targets.append((other, [str(d)]))
    for app_pid in sorted((p["hosts"]).glob("*/app.pid")) if p["hosts"].is_dir() else []:
        apid = read_pid(app_pid)
        if apid is not None:
            targets.append((apid, [APP_MODULE, f"--host-name {app_pid.parent.name} "]))
    for proc in _sandbox_processes(d):
        targets.append((proc.pid, [str(d)]))
    stopped = []
    seen: set[int] = set()
    for tpid, marker in targets:
        if tpid in seen:
            continue
        seen.add(tpid)
        if process_matches(tpid, marker):
            terminate_sync(tpid, marker, grace)
            stopped.append(tpid)
    for pidfile in [p["haproxy_pid"], *p["hosts"].glob("*/app.pid")] if p["hosts"].is_dir() else []:
        with contextlib.suppress(OSError):
            pidfile.unlink()
    with contextlib.suppress(OSError):
        p["socket"].unlink()
    return stopped
