"""`verify` finds tampering: a changed or removed event, a missing trigger, drifted projections."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import run_cli
from test_store import _filled
from ledger.verify import verify


@pytest.fixture
def filled(store, ledger, ledger_path):  # type: ignore[no-untyped-def]
    _filled(store)
    store.close()
    return ledger_path


def _results(ledger) -> dict[str, tuple[bool, str]]:  # type: ignore[no-untyped-def]
    return {c.name: (c.ok, c.detail) for c in verify(ledger)}


def test_a_clean_ledger_verifies(filled, ledger):
    results = _results(ledger)
    assert all(ok for ok, _ in results.values()), results
    out = run_cli("verify", "--db", str(filled))
    assert out.returncode == 0 and "FAIL" not in out.stdout


def _tamper(path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def test_an_altered_event_is_named(filled, ledger):
    with ledger.engine.connect() as conn:
        seq = conn.exec_driver_sql("SELECT seq FROM attempt_outcomes LIMIT 1").scalar()
    _tamper(filled, "DROP TRIGGER trg_attempt_outcomes_no_update",
            "UPDATE attempt_outcomes SET cost_usd = cost_usd + 1 WHERE seq = %d" % seq)
    results = _results(ledger)
    assert results["hash chain"] == (False, f"event seq {seq} in attempt_outcomes was altered "
                                            "(its hash does not match its content and "
                                            "predecessors)")
    assert results["append-only triggers"][0] is False
    assert "trg_attempt_outcomes_no_update" in results["append-only triggers"][1]
    assert results["acceptances and costs"][0] is False
    out = run_cli("verify", "--db", str(filled))
    assert out.returncode == 1 and f"event seq {seq} in attempt_outcomes was altered" in out.stdout


def test_a_removed_event_is_named(filled, ledger):
    with ledger.engine.connect() as conn:
        seq = conn.exec_driver_sql("SELECT MIN(seq) FROM job_reopens").scalar()
    _tamper(filled, "DROP TRIGGER trg_job_reopens_no_delete",
            "DELETE FROM job_reopens WHERE seq = %d" % seq)
    detail = _results(ledger)["hash chain"]
    assert detail[0] is False and f"event seq {seq} is missing" in detail[1]


def test_removing_the_newest_events_is_caught_by_the_head(filled, ledger):
    with ledger.engine.connect() as conn:
        seq = conn.exec_driver_sql("SELECT MAX(seq) FROM imports").scalar()
    _tamper(filled, "DROP TRIGGER trg_imports_no_delete", "DELETE FROM imports")
    ok, detail = _results(ledger)["hash chain"]
    assert not ok and "recorded head" in detail and str(seq) in detail


def test_projection_drift_is_found_and_rebuild_repairs_it(filled, ledger):
    _tamper(filled, "UPDATE job_state SET state = 'accepted' WHERE state = 'open'")
    ok, detail = _results(ledger)["projections"]
    assert not ok and "rebuild" in detail
    assert run_cli("rebuild", "--db", str(filled)).returncode == 0
    assert _results(ledger)["projections"][0] is True


def test_a_copy_verifies_independently(filled, tmp_path):
    """A consistent copy (SQLite's backup, as `sqlite3 ledger.db ".backup copy.db"` makes):
    the main file alone may lack what still sits in the -wal file."""
    copy = tmp_path / "copy.db"
    source, target = sqlite3.connect(filled), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    assert run_cli("verify", "--db", str(copy)).returncode == 0
    planned = [json.loads(run_cli("status", "--format", "json", "--db", str(p)).stdout)["planned"]
               for p in (filled, copy)]
    assert planned[0] > 0 and planned[0] == planned[1]
