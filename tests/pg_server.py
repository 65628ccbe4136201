"""A throwaway PostgreSQL server on 127.0.0.1 for the store's tests: initdb into a temp folder,
pg_ctl start on a free port, one fresh database per test, pg_ctl stop and delete at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """Start with :meth:`start`; :meth:`database` creates a database and returns its SQLAlchemy URL."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.prefix: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="mergekit-from-pg-"))
        if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._n = 0

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, text=True)

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "zoo", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        # fsync off: a test server need not survive a power cut
        self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.root / "server.log"), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.root} -F", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://zoo@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        self._n += 1
        name = f"test_{self._n}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="zoo", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
