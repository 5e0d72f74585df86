"""Backend factories for the contract suite: the same ledger on a SQLite file and on a PostgreSQL
database, behind one small interface, so every contract test is written once and run on both.

Load with `pytest_plugins = ("backends",)`: the PostgreSQL server is then one per session (from
LEDGER_TEST_PG_URL, or a private throwaway server), and each test gets its own database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ledger import schema
from ledger.db import Ledger, open_ledger, resolve_url
from pg_server import ExternalPg, PgServer, PostgresUnavailable

BACKENDS = ("sqlite", "postgresql")
PG_URL_ENV = "LEDGER_TEST_PG_URL"

_TRIGGERS_SQL = {
    "sqlite": "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'",
    "postgresql": "SELECT c.relname, t.tgname FROM pg_trigger t "
                  "JOIN pg_class c ON c.oid = t.tgrelid "
                  "JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE NOT t.tgisinternal AND n.nspname = current_schema()",
}
_VIEWS_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'view'",
    "postgresql": "SELECT table_name FROM information_schema.views "
                  "WHERE table_schema = current_schema()",
}
_TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    "postgresql": "SELECT table_name FROM information_schema.tables "
                  "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
}


@dataclass(frozen=True)
class Backend:
    """One ledger database, reachable as our code opens it and as an operator's shell would."""

    name: str
    db: str  # what a user passes to --db: a file path for SQLite, a URL for PostgreSQL

    @property
    def url(self) -> str:
        return resolve_url(self.db)

    def open(self, **kw: object) -> Ledger:
        return open_ledger(self.db, **kw)  # type: ignore[arg-type]

    def raw_engine(self) -> Engine:
        """A plain connection without the ledger's settings (the sqlite3 shell, psql)."""
        return create_engine(self.url, poolclass=NullPool)

    def truncate_sql(self, table: str) -> str:
        # SQLite has no TRUNCATE; its truncate optimisation is the unqualified DELETE.
        return (f"TRUNCATE {table} CASCADE" if self.name == "postgresql"
                else f"DELETE FROM {table}")

    def _names(self, sql: dict[str, str]) -> set[tuple[str, ...]]:
        engine = self.raw_engine()
        try:
            with engine.connect() as conn:
                return {tuple(r) for r in conn.exec_driver_sql(sql[self.name])}
        finally:
            engine.dispose()

    def triggers(self) -> set[tuple[str, ...]]:
        """(table, trigger) pairs."""
        return self._names(_TRIGGERS_SQL)

    def views(self) -> set[str]:
        return {r[0] for r in self._names(_VIEWS_SQL)}

    def tables(self) -> set[str]:
        return {r[0] for r in self._names(_TABLES_SQL)}


def expected_triggers(dialect: str) -> set[tuple[str, str]]:
    """(table, trigger) pairs the schema's append-only DDL creates."""
    out = set()
    for table in schema.EVENT_TABLES:
        for ddl in schema.append_only_ddl(dialect, table):
            match = re.match(r"CREATE TRIGGER (\w+)", ddl)
            assert match, ddl
            out.add((table.name, match.group(1)))
    return out


# --- PostgreSQL server and databases ------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | ExternalPg]:
    """LEDGER_TEST_PG_URL's server, or a private one started for this session."""
    external = os.environ.get(PG_URL_ENV)
    server: PgServer | ExternalPg | None = None
    problem = ""
    try:
        if external:
            server = ExternalPg(external)
        else:
            server = PgServer()
            server.start()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if server is None or problem:
        pytest.fail(problem, pytrace=False)  # never skip: a missing backend is a failure
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer | ExternalPg) -> str:
    """The name of a migrated database that fresh test databases are copied from."""
    url = pg_server.new_database("template")
    open_ledger(url).dispose()
    return url.rsplit("/", 1)[1]


@pytest.fixture
def pg_url(pg_server: PgServer | ExternalPg, pg_template: str) -> str:
    """A fresh migrated PostgreSQL ledger database for one test."""
    return pg_server.new_database("ledger", template=pg_template)


@pytest.fixture
def empty_pg_url(pg_server: PgServer | ExternalPg) -> str:
    """A fresh empty PostgreSQL database (no schema) for one test."""
    return pg_server.new_database("empty")


# --- the contract fixtures: parametrized over the backends --------------------------------------

@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh migrated ledger on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        open_ledger(str(path)).dispose()
        return Backend("sqlite", str(path))
    return Backend("postgresql", request.getfixturevalue("pg_url"))


@pytest.fixture(params=BACKENDS)
def empty_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A database with no schema at all, on each backend."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "ledger.db"))
    return Backend("postgresql", request.getfixturevalue("empty_pg_url"))


@pytest.fixture
def ledger_on(backend: Backend) -> Iterator[Ledger]:
    led = backend.open()
    yield led
    led.dispose()
