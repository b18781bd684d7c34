"""A real PostgreSQL server for tests: Debian's binaries, `initdb` + `pg_ctl` in a temp dir.

The server listens on a free loopback port with `trust` authentication (nothing but this
machine's loopback can reach it) and keeps its socket inside its own directory. `initdb`
refuses to run as root, so when the tests run as root the server runs as the `postgres`
user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_binaries() -> tuple[Path | None, str]:
    """(the bin directory of the newest installed PostgreSQL, "") or (None, why not)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4])
    )
    if not found:
        return None, "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no postgres user to run initdb as"
        if shutil.which("runuser") is None:
            return None, "running as root and runuser is missing"
    return Path(found[-1]).parent, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throw-away cluster; `url(db)` names a database on it, `stop`/`start` cycle it."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        """`fsync`: as a production server (benchmarks); tests need not survive power loss."""
        self._bindir = bindir
        self._fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="kbqa-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if not self._fsync:  # spares the shared disk
            options += " -c fsync=off"
        options += " -c max_connections=300"
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(PostgresError):  # already stopped
            self.stop("immediate")
        # `rm` in a process of its own: shutil.rmtree unlinks the cluster's files (~300 for each
        # database a test made) one call at a time, each taking the GIL back, so one busy thread
        # in the test process slows it tenfold (60 databases: 7 s instead of 0.9 s).
        subprocess.run(["rm", "-rf", "--", str(self.dir)], check=False)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bindir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir, timeout=120)
        if done.returncode != 0:
            raise PostgresError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")


class PostgresError(RuntimeError):
    pass
