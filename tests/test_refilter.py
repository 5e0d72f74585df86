"""refilter: stored responses are judged again by the current filter, with no request and no
spend; jobs whose response now passes become accepted."""

from __future__ import annotations

import time

from conftest import make_jobs, run_cli
from ledger import simulator_dialogues as sd
from ledger.filters import FILTER_VERSION
from ledger.records import OutcomeRecord, VerdictRecord


def _stored_response(store, job, content: str) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    start = store.begin_attempt(job.job_id, "r", "m", 0, "p1", 200, 0.001, None, now, 60)
    # Judged by an older, stricter filter version: rejected, not accepted.
    old = VerdictRecord("f0", False, ("explicit_correction",), 4, 1, False, {}, None)
    store.finish_attempt(start.attempt_id, job.job_id, "r",
                         OutcomeRecord("ok", 0.0004, "response", content=content,
                                       finish_reason="stop"), old)


def test_refilter_accepts_without_spending_and_keeps_old_verdicts(store, ledger, ledger_path):
    jobs = make_jobs(2)
    store.plan_jobs(jobs)
    store.start_run("r", "h", 1, "p1", "f0", {})
    claimed = store.claim("r", 2, time.time(), 60)
    pair0 = claimed[0]
    _stored_response(store, pair0, sd.dialogue_content(pair0.erroneous, pair0.correct, 0))
    _stored_response(store, claimed[1], "not a dialogue at all")
    store.release("r", [j.job_id for j in claimed])
    store.close()

    out = run_cli("refilter", "--db", str(ledger_path))
    assert out.returncode == 0, out.stderr
    assert f"filter {FILTER_VERSION}: judged 2 stored response(s)" in out.stdout
    assert "1 job(s) newly accepted, $0 spent" in out.stdout
    with ledger.engine.connect() as conn:
        spend = conn.exec_driver_sql("SELECT spend_usd FROM ledger_totals").scalar()
        verdicts = conn.exec_driver_sql(
            "SELECT filter_version, passed FROM verdicts ORDER BY seq").all()
        accepted = conn.exec_driver_sql("SELECT job_id FROM acceptances").all()
    assert abs(spend - 0.0008) < 1e-12  # nothing new was spent
    assert [tuple(v) for v in verdicts] == [("f0", 0), ("f0", 0), (FILTER_VERSION, 1),
                                            (FILTER_VERSION, 0)]
    assert [a[0] for a in accepted] == [pair0.job_id]
    # A second refilter has nothing left to judge under this version.
    again = run_cli("refilter", "--db", str(ledger_path))
    assert "judged 0 stored response(s)" in again.stdout
