"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, listen on a free loopback
port, hand out one fresh database per caller, remove everything on stop.

As root the server runs as the `postgres` system user (PostgreSQL refuses to run as root); the
data directory is a temp dir that user owns. Durability settings are off: the data is disposable
and start-up must take a second or two, not ten.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install PostgreSQL: apt-get install postgresql"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30
SHM = "/dev/shm"
SHM_MIN_FREE = 2 * 1024**3

# Enough connections for 2 stores x 8 threads plus subprocess workers, each with its own pool.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "300",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine, or the server would not start."""


def find_bin_dir() -> Path:
    """The newest PostgreSQL server's bin directory (Debian layout first, then PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scratch_dir() -> str | None:
    """Memory-backed /dev/shm when it has room: every test copies a database, and creating and
    removing a few hundred MB on a busy disk costs more than all the tests together."""
    try:
        st = os.statvfs(SHM)
    except OSError:
        return None
    room = st.f_bavail * st.f_frsize
    return SHM if room > SHM_MIN_FREE and os.access(SHM, os.W_OK) else None


def _as_server_user() -> list[str]:
    """The command prefix that runs a server binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(f"no '{SUPERUSER}' system user to run the server as; "
                                  f"{INSTALL_HINT}") from None
    return ["runuser", "-u", SUPERUSER, "--"]


@dataclass
class PgServer:
    """One private server. `start()` then `new_database()` per test; `stop()` removes it."""

    bin_dir: Path = field(default_factory=lambda: find_bin_dir())  # late-bound: patchable
    port: int = 0
    root: Path | None = None
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_as_server_user(), *args], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, check=False)

    def start(self) -> str:
        prefix = _as_server_user()
        self.root = Path(tempfile.mkdtemp(prefix="ledger-pg-", dir=_scratch_dir()))
        if prefix:
            shutil.chown(self.root, user=SUPERUSER, group=SUPERUSER)
        self.port = free_port()
        init = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                         "--auth=trust", "--encoding=UTF8", "--no-sync")
        if init.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()}")
        options = " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())
        options += f" -p {self.port} -k {self.root}"  # the unix socket stays in our temp dir
        started = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w",
                            "-t", str(START_TIMEOUT_S), "-l", str(self.root / "server.log"),
                            "-o", options, "start")
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()} {log}")
        return self.url()

    def new_database(self, prefix: str = "ledger", template: str | None = None) -> str:
        """A fresh database (empty, or a copy of `template`); returns its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        admin(self.url(), create_database_sql(name, template))
        return self.url(name)

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                      "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def create_database_sql(name: str, template: str | None) -> str:
    # A copy of a migrated template is ~5x faster than migrating a fresh database.
    return f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")


def admin(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@dataclass
class ExternalPg:
    """A server someone else runs (LEDGER_TEST_PG_URL): databases we create are dropped on stop."""

    url: str
    created: list[str] = field(default_factory=list)

    def _admin_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=False)

    def new_database(self, prefix: str = "ledger", template: str | None = None) -> str:
        from sqlalchemy.engine import make_url

        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin(self._admin_url(), create_database_sql(name, template))
        self.created.append(name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def stop(self) -> None:
        for name in self.created:
            admin(self._admin_url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
