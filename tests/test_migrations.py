"""Migrations: the schema the code expects is the schema Alembic builds, both ways, with the
append-only triggers intact; old ledgers upgrade on open and newer ones are refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import ROOT, run_cli
from ledger import schema
from ledger.db import _alembic_config, head_revision, make_engine, open_ledger, resolve_url
from ledger.errors import SchemaTooNewError


def _alembic(db_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alembic", "-x", f"db={db_path}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _ledger_at(db, revision: str):  # type: ignore[no-untyped-def]
    """A ledger migrated only up to `revision`, as an older version left it."""
    engine = make_engine(resolve_url(str(db)))
    with engine.connect() as conn:
        with conn.begin():
            command.upgrade(_alembic_config(conn), revision)
    engine.dispose()
    return db


def _schema_names(db_path, kind: str) -> set[str]:
    """Names of the schema objects of one kind ('trigger', 'index', ...) in a SQLite file."""
    con = sqlite3.connect(db_path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = ?",
                                          (kind,))}
    finally:
        con.close()


def _triggers(db_path) -> set[str]:
    return _schema_names(db_path, "trigger")


def test_migrated_schema_matches_the_code_metadata(ledger):
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []


def test_upgrade_downgrade_upgrade_with_alembic_keeps_triggers(tmp_path):
    db = tmp_path / "l.db"
    expected = {f"trg_{t.name}_{k}" for t in schema.EVENT_TABLES
                for k in ("no_update", "no_delete", "no_replace")}
    up = _alembic(db, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert expected <= _triggers(db)
    down = _alembic(db, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _triggers(db) == set()
    again = _alembic(db, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert expected <= _triggers(db)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO runs VALUES ('r', 1, 'h', 't', 'host', 1, 'p', 'f', '{}')")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM runs")
    con.close()


def test_a_ledger_from_a_newer_version_is_refused(tmp_path):
    db = tmp_path / "l.db"
    open_ledger(str(db)).dispose()
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNewError, match="newer"):
        open_ledger(str(db))
    result = run_cli("status", "--db", str(db))
    assert result.returncode == 2
    assert "newer than this scaffold-ledger" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_older_ledger_is_upgraded_on_open_and_says_so(tmp_path):
    db = _ledger_at(tmp_path / "l.db", "0001")
    if head_revision() == "0001":
        pytest.fail("this test needs a second revision to upgrade to")
    result = run_cli("status", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert f"upgraded schema 0001 -> {head_revision()}" in result.stderr
    again = run_cli("status", "--db", str(db))
    assert "upgraded" not in again.stderr


def test_0005_rebuilds_insert_guards_that_checked_a_key_twice(tmp_path):
    """A guard written with a key twice (as ledgers before 0005 have them) is re-created with
    each key once, and still refuses INSERT OR REPLACE on a connection without
    recursive_triggers (the sqlite3 shell's default)."""
    db = _ledger_at(tmp_path / "l.db", "0004")
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER trg_runs_no_replace")
    con.execute("CREATE TRIGGER trg_runs_no_replace BEFORE INSERT ON runs WHEN "
                "EXISTS (SELECT 1 FROM runs WHERE run_id = NEW.run_id) OR "
                "EXISTS (SELECT 1 FROM runs WHERE seq = NEW.seq) OR "
                "EXISTS (SELECT 1 FROM runs WHERE seq = NEW.seq) "
                "BEGIN SELECT RAISE(ABORT, 'runs is append-only: an event with this key exists'); END")
    con.commit()
    con.close()
    open_ledger(str(db)).dispose()
    con = sqlite3.connect(db)
    guards = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND "
                              "name LIKE '%no_replace'").fetchall())
    assert len(guards) == len(schema.EVENT_TABLES)
    for sql in guards.values():
        checks = sql.split(" WHEN ", 1)[1].split(" BEGIN ", 1)[0].split(" OR ")
        assert len(checks) == len(set(checks)), sql
    con.execute("INSERT INTO runs VALUES ('r', 1, 'h', 't', 'host', 1, 'p', 'f', '{}')")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("INSERT OR REPLACE INTO runs VALUES ('r', 1, 'h', 't', 'host', 1, 'p', 'f', "
                    "'{}')")
    con.close()


def test_0006_drops_prefix_indexes_and_lookups_still_search_a_key(tmp_path):
    """A 0005 ledger loses the two single-column indexes on upgrade; attempts by job and
    verdicts by attempt are still searched through an index, never a scan of the table."""
    db = _ledger_at(tmp_path / "old.db", "0005")
    dropped = {"ix_attempts_job_id", "ix_verdicts_attempt_id"}
    assert dropped <= _schema_names(db, "index")
    open_ledger(str(db)).dispose()
    assert not dropped & _schema_names(db, "index")
    con = sqlite3.connect(db)
    try:
        for sql in ("SELECT * FROM attempts WHERE job_id = 'j'",
                    "SELECT MAX(attempt_no) FROM attempts WHERE job_id = 'j'",
                    "SELECT * FROM verdicts WHERE attempt_id = 1"):
            plan = " ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql))
            assert plan.startswith("SEARCH") and "INDEX" in plan, (sql, plan)
    finally:
        con.close()


def test_0007_keys_cost_indexes_by_attempt_and_the_cost_views_still_cover(tmp_path):
    """After 0007 the two cost indexes put attempt_id right after their group column (new
    outcomes append to their group's range), and the cost views still read them as covering
    indexes instead of the dialogue-carrying rows."""
    db = _ledger_at(tmp_path / "old.db", "0006")
    open_ledger(str(db)).dispose()
    con = sqlite3.connect(db)
    try:
        def columns(index: str) -> list[str]:
            return [r[2] for r in con.execute(f"PRAGMA index_info({index})")]

        assert columns("ix_attempt_outcomes_model_cost") == [
            "model_served", "attempt_id", "cost_usd", "prompt_tokens", "completion_tokens"]
        assert columns("ix_attempt_outcomes_error_cost") == [
            "error_class", "attempt_id", "cost_usd"]
        for view, index in (("v_cost_by_model", "ix_attempt_outcomes_model_cost"),
                            ("v_waste_by_reason", "ix_attempt_outcomes_error_cost")):
            plan = [r[3] for r in con.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {view}")]
            assert any(f"COVERING INDEX {index}" in step for step in plan), plan
    finally:
        con.close()
