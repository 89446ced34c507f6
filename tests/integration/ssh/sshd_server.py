"""A real OpenSSH server on 127.0.0.1 for the SSH driver's tests.

Keys are generated in a temp folder (host key, an authorized client key, a stranger key);
`known_hosts` holds the real host key for `[127.0.0.1]:<port>`. The config follows
research/components.md §4: `StrictModes no` (the keys live under a world-writable temp
dir), `UsePAM no`, `/run/sshd` present, sshd started by absolute path. The fixture FAILS
when sshd is missing, it never skips.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    folder: Path
    known_hosts: Path
    client_key: Path
    stranger_key: Path
    """A valid key pair that is not in authorized_keys."""
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    path.chmod(0o600)
    return key


def _wait_banner(proc: subprocess.Popen[bytes], port: int, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.settimeout(1.0)
            if s.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.02)
    pytest.fail(f"sshd did not answer on 127.0.0.1:{port}:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A running sshd accepting the generated client key for the current user."""
    if not SSHD.exists():
        pytest.fail(f"{SSHD} is missing: apt-get install openssh-server (see Makefile)")
    try:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        pytest.fail(f"/run/sshd (sshd's privilege separation folder) cannot be created: {exc}")
    folder = tmp_path_factory.mktemp("sshd")
    host = _key(folder / "host_ed25519")
    client = _key(folder / "client_ed25519")
    _key(folder / "stranger_ed25519")
    (folder / "authorized_keys").write_bytes(client.export_public_key())
    (folder / "authorized_keys").chmod(0o600)
    log = folder / "sshd.log"
    user = getpass.getuser()
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        cfg = folder / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {folder / 'host_ed25519'}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            _wait_banner(proc, port, log, time.monotonic() + 10.0)
            break
        except pytest.fail.Exception:
            if proc.poll() is None or "Address already in use" not in log.read_text(
                errors="replace"
            ):
                proc.kill()
                proc.wait()
                raise
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host.export_public_key().decode().strip()}\n")
    try:
        yield Sshd(
            port=port,
            user=user,
            folder=folder,
            known_hosts=known,
            client_key=folder / "client_ed25519",
            stranger_key=folder / "stranger_ed25519",
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
