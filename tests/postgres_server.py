"""A real PostgreSQL server on this machine, for the tests: Debian's binaries, a throw-away cluster.

The cluster lives in one temporary directory (data, socket, log) and listens on 127.0.0.1 at
a free port with trust authentication, so it touches nothing of the machine's own PostgreSQL.
PostgreSQL refuses to run as root: under root the server runs as the `postgres` system user
that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "postgres"


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: Debian keeps them off PATH, one folder per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def missing() -> str | None:
    """Why a test server cannot start here (a sentence), or None when it can."""
    if bin_dir() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl; apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'the PostgreSQL driver is not installed (pip install -e ".[postgres]")'
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"PostgreSQL will not run as root and there is no {USER!r} user to run it"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Start with `start()`, stop with `stop()`; `url(database)` after `create_database`."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.port = _free_port()
        # Not under pytest's tmp_path: its parents are private to root, and the server's user
        # must reach its own directory.
        self.root = Path(tempfile.mkdtemp(prefix="mnist_lab_postgres_"))
        self.as_user = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []

    def run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, text=True)

    def start(self) -> None:
        if self.as_user:
            entry = pwd.getpwnam(USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        # --no-sync, fsync=off: a cluster that lives for one test run need not survive a power cut.
        self.run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "--encoding=UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        # autocommit: CREATE DATABASE cannot run inside a transaction.
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        # The driver named: SQLAlchemy's default for postgresql:// is psycopg2 before 2.1, psycopg after.
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
