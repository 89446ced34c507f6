"""A throwaway PostgreSQL cluster for tests: `initdb` in a temporary folder, loopback only.

Debian's server binaries live in /usr/lib/postgresql/<major>/bin. PostgreSQL refuses to run
as root, so when the tests run as root the cluster belongs to the `postgres` OS user (the
Debian package creates it). Missing binaries fail the test: `make test` installs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

PASSWORD_ROLE = "alice"
ROLE_PASSWORD = "right-pw-8c1f"


def pg_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                "run `make setup-test` or apt-get install postgresql"
            )
        return Path(on_path).parent
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One running cluster; `url(db)` names a database on it, `new_database()` makes one."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="immunity-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        self.down = False  # stopped by `halt`
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        # one role that must give a password (every other connects by trust), for the tests
        # of a refused password: see `password_role`
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._opts = opts
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def _run(self, argv: list[str]) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip()[-500:]}")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (`-m fast`: every session is told and ended), keep it down
        `down_s` seconds (connections refused), start it again on the same port."""
        import time

        self.halt()
        time.sleep(down_s)
        self.resume()

    def halt(self) -> None:
        """Stop the server (`-m fast`: every session is told and ended); `resume` starts it
        again on the same port."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.down = True

    def resume(self) -> None:
        """Start the server `halt` stopped, on the same port (no-op when it runs)."""
        if not self.down:
            return
        self.down = False
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                self._opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "start",
            ]
        )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def password_role(self, db: str) -> str:
        """Creates (once) `PASSWORD_ROLE`, whose password is `ROLE_PASSWORD` and who must give
        it, and makes it the owner of `db`; returns the URL of `db` as that role, without the
        password."""
        with psycopg.connect(self.url(), autocommit=True) as c:
            exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname=%s", (PASSWORD_ROLE,))
            if exists.fetchone() is None:
                c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            c.execute(f'ALTER DATABASE "{db}" OWNER TO {PASSWORD_ROLE}')  # may create tables
        return f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
