"""Opening a ledger: URL resolution, connection settings, and migrate-on-open.

SQLite connections run in WAL mode with synchronous=FULL (one fsync per commit is nothing next to
an API call), a busy timeout, foreign keys and recursive triggers on, and every write transaction
takes the write lock up front (BEGIN IMMEDIATE) so two writers never deadlock on lock upgrade.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.pool import NullPool

from .errors import DatabaseError, SchemaTooNewError, UsageError

DEFAULT_DB = "ledger.db"
BUSY_TIMEOUT_MS = 30_000
ROOT = Path(__file__).resolve().parent.parent
# Any fixed 64-bit number, the same in every process: the key of the migration advisory lock.
MIGRATE_LOCK_KEY = 0x5CAFF01D1ED6E4
WRITE_OPTION = "ledger_write"


def resolve_url(db: str | None) -> str:
    """--db wins, then LEDGER_DB, then ./ledger.db. A bare path means a SQLite file."""
    value = db or os.environ.get("LEDGER_DB") or DEFAULT_DB
    if "://" in value:
        return value
    # Built, not concatenated: '?', '#' and '%' in a path are escaped, so the URL names this
    # file and no other ("sqlite:////a?b/ledger.db" would be the file /a).
    return URL.create("sqlite", database=str(Path(value).expanduser().resolve())
                      ).render_as_string(hide_password=False)


def _check_sqlite_file(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise DatabaseError(f"{path} is a directory; pass --db a file path for the ledger")
    if p.exists():
        if p.stat().st_size == 0:
            return
        if not os.access(p, os.R_OK):
            raise DatabaseError(f"cannot read {path}: permission denied; fix its permissions "
                                "or pass --db another path")
        if not _is_sqlite_file(p):
            raise DatabaseError(f"{path} is not a SQLite database; pass --db a ledger file or a "
                                "new path")
        return
    parent = p.parent
    if not parent.exists():
        raise DatabaseError(f"directory {parent} does not exist; create it or pass --db "
                            "another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DatabaseError(f"directory {parent} is not writable; pass --db a path in a "
                            "writable directory")


def _is_sqlite_file(path: Path) -> bool:
    """Whether SQLite can read the file's header, asked of SQLite itself.

    Never open() the ledger file directly: closing any descriptor of a file drops every POSIX
    lock this process holds on it, those of ledger connections already open here included, and
    another process closing its last connection would then think itself the last user and
    delete the WAL and shared-memory files under them (reads fail with SQLITE_IOERR_SHORT_READ).
    SQLite keeps such descriptors open until its own locks go.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            return False
        raise DatabaseError(f"cannot read {path}: {exc}; check the file and its directory") \
            from None
    return True


def _enter_wal(cur: sqlite3.Cursor) -> None:
    """PRAGMA journal_mode=WAL, retried while the file is locked. When several processes open
    a new ledger at once, the switch of the fresh file to WAL can fail at once with "database
    is locked" without waiting out the busy timeout (seen about once in 100 runs of four
    parallel first opens on a loaded machine); it is retried here for as long as that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _refuse_other_databases(cur: sqlite3.Cursor, engine: Engine) -> None:
    """A SQLite file with tables but no ledger in it belongs to something else: adding a
    ledger's tables to it (and switching it to WAL) would change it behind its owner's back.
    A PostgreSQL database is often shared, so there a ledger may join other tables."""
    tables = [r[0] for r in cur.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    present = set(tables)
    if not tables or {"alembic_version", "jobs", "ledger_totals"} <= present:
        return
    if present == {"alembic_version"}:
        # A ledger downgraded to base keeps alembic's version table, empty or at one of ours;
        # another program that keeps its schema with alembic has a version of its own.
        version = cur.execute("SELECT version_num FROM alembic_version").fetchone()
        if version is None or version[0] in known_revisions():
            return
    shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
    raise DatabaseError(f"{_where(engine)} is not a ledger (it holds other tables: {shown}); "
                        "pass --db a new file or an existing ledger")


def _install_sqlite_settings(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE is ours to issue.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _refuse_other_databases(cur, engine)  # before WAL: that setting stays with the file
        _enter_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA recursive_triggers=ON")
        # Room for a large plan's transaction in memory (allocated only as used), so SQLite
        # does not spill half-built index pages to the WAL and read them back.
        cur.execute("PRAGMA cache_size=-262144")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # Writers take the lock up front; readers take a WAL snapshot and never block anyone.
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def write_connection(engine: Engine):  # type: ignore[no-untyped-def]
    """A connection whose transactions take the write lock at BEGIN (SQLite)."""
    return engine.connect().execution_options(**{WRITE_OPTION: True})


def _install_readonly_sqlite_settings(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA query_only=ON")
        _refuse_other_databases(cur, engine)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN")


def make_engine(url: str, *, readonly: bool = False, existing: bool = False) -> Engine:
    """An engine with the ledger's connection settings; raises DatabaseError for bad URLs.
    `existing` (implied by `readonly`): a SQLite file that is not there is an error, not a new
    ledger."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"cannot parse database URL {url!r}; pass --db a file path or a URL "
                            "like postgresql+psycopg://user@host/db") from None
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            path = parsed.database or ""
            if not path or path == ":memory:":
                raise DatabaseError("an in-memory ledger would be lost on exit; pass --db a "
                                    "file path")
            _check_sqlite_file(path)
            if (readonly or existing) and not Path(path).exists():
                raise DatabaseError(f"no ledger at {path}; run `python cli.py plan` first "
                                    "or pass --db")
            if not readonly and not Path(path).exists():
                # Owner-only from the first byte: prompts and responses are the team's data.
                # SQLite gives the -wal and -shm files the same mode.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            if readonly:
                # A SQLite URI: the path percent-encoded, or a '#' or '?' in it would cut it
                # short (and open some other file read-write).
                ro_url = URL.create("sqlite", database="file:" + quote(path),
                                    query={"mode": "ro", "uri": "true"})
                engine = create_engine(ro_url, poolclass=NullPool)
                _install_readonly_sqlite_settings(engine)
            else:
                # NullPool-free: one process keeps a few connections; threads take their own.
                engine = create_engine(url, pool_size=4, max_overflow=64, pool_timeout=120)
                _install_sqlite_settings(engine)
            return engine
        if backend == "postgresql":
            if readonly:
                return create_engine(url, poolclass=NullPool,
                                     execution_options={"postgresql_readonly": True})
            return create_engine(url, pool_size=4, max_overflow=64, pool_pre_ping=True)
    except NoSuchModuleError:
        pass
    except ModuleNotFoundError as exc:
        raise DatabaseError(f"the database driver for {backend} is not installed ({exc.name}); "
                            "pip install -r requirements.txt") from None
    raise DatabaseError(f"unsupported database {backend!r}; use a SQLite path or a "
                        "postgresql+psycopg:// URL")


@dataclass
class Ledger:
    """An open ledger: the engine plus what it is."""

    engine: Engine
    url: str

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def ledger_files(ledger: Ledger) -> list[Path]:
    """The files a SQLite ledger lives in (the database, its -wal, -shm and -journal); none
    for a server database."""
    if ledger.dialect != "sqlite":
        return []
    name = unquote(str(make_url(ledger.url).database or "").removeprefix("file:"))
    if not name or name == ":memory:":
        return []
    base = Path(name).expanduser().resolve()
    return [base] + [base.with_name(base.name + suffix) for suffix in ("-wal", "-shm",
                                                                         "-journal")]


def refuse_ledger_target(ledger: Ledger, target: str | os.PathLike[str]) -> None:
    """An output file (export, mix, HTML report) must not be the ledger itself: replacing
    the database file with the output would destroy the ledger. Compared after resolving
    links, and by inode where both exist (a hard link)."""
    out = Path(target).expanduser()
    try:
        resolved = out.resolve()
    except OSError:
        return  # check_target names what is wrong with the path
    for own in ledger_files(ledger):
        same = resolved == own
        if not same and own.exists() and out.exists():
            try:
                same = os.path.samefile(out, own)
            except OSError:
                same = False
        if same:
            raise UsageError(f"{target} is the ledger's own file ({own.name}); writing there "
                             "would destroy the ledger: choose another --out path")


def _alembic_config(connection=None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration's revision id, read from the migration files' text.

    Alembic's ScriptDirectory costs an open a quarter of a second of imports, and every command
    opens a ledger; it is asked only when the files do not name exactly one head.
    """
    return _head_from_files(ROOT / "migrations" / "versions") or _alembic_head()


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*=\s*['\"]([^'\"]*)['\"]", re.M)


def _head_from_files(versions: Path) -> str | None:
    """The one revision no migration file names as its parent; None when that is not clear
    (a merge revision's tuple of parents, say), so that alembic decides."""
    revisions, parents = set(), set()
    for path in versions.glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            return None
        revisions.add(found["revision"])
        parents.add(found.get("down_revision"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def _where(engine: Engine) -> str:
    """The ledger as a user named it: a SQLite file's path, else the URL without password."""
    if engine.dialect.name == "sqlite":
        return unquote(str(engine.url.database).removeprefix("file:"))
    return engine.url.render_as_string(hide_password=True)


def _no_ledger(engine: Engine) -> DatabaseError:
    """A database that is there but holds no ledger, for a command that does not start one."""
    return DatabaseError(f"{_where(engine)} holds no ledger; run `python cli.py plan` first or "
                         "pass --db")


def _current_revision(conn) -> str | None:  # type: ignore[no-untyped-def]
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return row[0] if row else None


def migrate(engine: Engine, *, quiet: bool = False, existing: bool = False) -> None:
    """Bring the schema to head under the write lock, so parallel openers do not race.
    `existing`: a database without a ledger in it is an error rather than a new ledger."""
    head = head_revision()
    # A ledger at head (nearly every open) is confirmed from a read snapshot, so a command
    # never queues behind a run's writes just to learn that there is nothing to migrate.
    with engine.connect() as conn:
        current = _current_revision(conn)
        conn.rollback()
    if current == head:
        return
    if current is None and existing:
        raise _no_ledger(engine)
    from alembic import command

    with write_connection(engine) as conn:
        current = _current_revision(conn)
        conn.rollback()
        if current == head:
            return
        if current is not None and current not in known_revisions():
            raise SchemaTooNewError(
                f"this ledger has schema {current}, newer than this scaffold-ledger knows "
                f"(head {head}); upgrade scaffold-ledger to open it")
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # PostgreSQL has no database-wide write lock to take up front; a transaction-
                # scoped advisory lock makes concurrent first opens queue here instead.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})")
            current = _current_revision(conn)  # re-read under the lock: another process may
            if current == head:                # have migrated while we waited
                return
            command.upgrade(_alembic_config(conn), "head")
        if current is not None and not quiet:
            print(f"ledger: upgraded schema {current} -> {head}", file=sys.stderr)


def open_ledger(db: str | None = None, *, create: bool = True, readonly: bool = False,
                existing: bool = False) -> Ledger:
    """Open (and by default create or upgrade) the ledger named by --db / LEDGER_DB.
    `existing`: upgrade one that is there, but never start a new one (a mistyped --db path
    should not be answered with an empty ledger's zeros)."""
    url = resolve_url(db)
    engine = make_engine(url, readonly=readonly, existing=existing)
    try:
        if readonly:
            with engine.connect() as conn:
                current = _current_revision(conn)
            if current is None:
                raise _no_ledger(engine)
        elif create:
            migrate(engine, existing=existing)
    except SADatabaseError as exc:
        engine.dispose()
        raise _database_error(url, exc) from None
    except Exception:
        engine.dispose()
        raise
    return Ledger(engine=engine, url=url)


def _display(url: str) -> str:
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the database"


def database_error_from(exc: Exception, url: str | None = None) -> DatabaseError:
    """A driver error as one actionable line."""
    orig = getattr(exc, "orig", exc)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "disk is full" in text or "No space left" in text:
        return DatabaseError(f"the disk holding the ledger is full ({text}); free space and run "
                             "the command again: committed work is safe")
    return _database_error(url or "the ledger", exc)


def _database_error(url: str, exc: Exception) -> DatabaseError:
    orig = getattr(exc, "orig", exc)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "unable to open database file" in text and url.startswith("sqlite:///"):
        parent = Path(url.removeprefix("sqlite:///")).parent
        if not os.access(parent, os.W_OK):
            return DatabaseError(f"directory {parent} is read-only: SQLite needs to write its "
                                 "-wal and -shm files beside the ledger; make it writable or "
                                 "copy the ledger elsewhere and pass --db")
    if isinstance(exc, OperationalError) and "readonly" in text.lower():
        return DatabaseError(f"{_display(url)} is read-only ({text}); fix its permissions or "
                             "pass --db a writable path")
    if "not a database" in text or "malformed" in text:
        return DatabaseError(f"{_display(url)} is not a valid ledger ({text}); pass --db "
                             "another path or restore it from a backup")
    return DatabaseError(f"cannot open {_display(url)}: {text}")
