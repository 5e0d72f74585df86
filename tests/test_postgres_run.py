"""The run loop on PostgreSQL: `python cli.py run` against the simulator, and two workers sharing
one ledger as workers on two machines would; plus the PostgreSQL-only locking property that lets
them scale: a claim does not wait for another process's event transaction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("backends", "pg_server")

from conftest import ROOT, make_jobs, run_cli  # noqa: E402
from ledger import queries, schema  # noqa: E402
from ledger.db import Ledger, open_ledger  # noqa: E402
from ledger.simulator import SimConfig, Simulator  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.tx import chain_hash, event_columns  # noqa: E402

pytest_plugins = ("backends",)

KEY = "sk-or-v1-postgres-run-test"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    s = Simulator(SimConfig.from_kwargs(latency_ms=20, api_key=KEY, seed=3, p_500=0.05,
                                        p_correction=0.1))
    s.start()
    yield s
    s.stop()


def _env(sim: Simulator) -> dict[str, str]:
    return {"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": sim.base_url}


def _status(url: str) -> dict[str, Any]:
    result = run_cli("status", "--db", url, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_chain_links(ledger: Ledger) -> None:
    rows = []
    with ledger.engine.connect() as conn:
        for t in schema.EVENT_TABLES:
            cols = event_columns(t)
            rows += [(r[0], r[1], t.name, list(r[2:])) for r in conn.exec_driver_sql(
                f"SELECT seq, row_hash, {', '.join(cols)} FROM {t.name}")]
        head = tuple(conn.exec_driver_sql("SELECT head_seq, head_hash FROM ledger_totals").one())
    rows.sort()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    prev = schema.GENESIS_HASH
    for seq, row_hash, table, values in rows:
        prev = chain_hash(prev, table, seq, values)
        assert prev == row_hash, f"seq {seq} in {table}"
    assert head == (rows[-1][0], rows[-1][1])


def _attempts_by_job(ledger: Ledger) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with ledger.engine.connect() as conn:
        for job_id, run_id in conn.exec_driver_sql("SELECT job_id, run_id FROM attempts"):
            out.setdefault(job_id, set()).add(run_id)
    return out


def test_cli_plan_and_run_against_the_simulator_on_postgresql(pg_url, sim):
    plan = run_cli("plan", "--target", "24", "--db", pg_url)
    assert plan.returncode == 0, plan.stderr
    run = run_cli("run", "--db", pg_url, "--concurrency", "4", "--quiet", env=_env(sim))
    assert run.returncode == 0, run.stderr
    assert "stopped: done" in run.stdout
    st = _status(pg_url)
    assert st["planned"] == 24
    assert st["accepted"] + st["failed"] == 24 and st["accepted"] >= 20
    assert st["outcome_unknown"] == 0 and st["reserved_usd"] == 0
    # What the simulator billed is what the ledger recorded, to the cent and beyond.
    assert st["spend_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
    ledger = open_ledger(pg_url)
    try:
        _assert_chain_links(ledger)
    finally:
        ledger.dispose()
    # Run again: nothing left to do, nothing spent.
    again = run_cli("run", "--db", pg_url, "--quiet", env=_env(sim))
    assert again.returncode == 0, again.stderr
    assert _status(pg_url)["spend_usd"] == st["spend_usd"]


@pytest.mark.timeout(120)
def test_two_run_processes_share_one_postgresql_ledger(pg_url, sim):
    n_jobs = 60
    ledger = open_ledger(pg_url)
    try:
        store = Store(ledger)
        store.plan_jobs(make_jobs(n_jobs))
        store.close()
        env = {**_env(sim), "LEDGER_DB": pg_url}
        cmd = [sys.executable, str(ROOT / "cli.py"), "run", "--concurrency", "4", "--quiet"]
        procs = [subprocess.Popen(cmd, cwd=ROOT, env={**_clean_env(), **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outputs = [p.communicate(timeout=100) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, err
            assert "stopped: done" in out
        st = queries.status(ledger)
        assert st.total.accepted + st.total.failed == n_jobs and st.total.remaining == 0
        by_job = _attempts_by_job(ledger)
        assert len(by_job) == n_jobs
        # Leases outlive the runs, so no job was ever worked on by both workers.
        assert all(len(runs) == 1 for runs in by_job.values())
        runs = set().union(*by_job.values())
        assert len(runs) == 2, "both workers took jobs"
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM run_stops "
                                        "WHERE reason = 'done'").scalar() == 2
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM open_attempts").scalar() == 0
        assert st.total.spend_usd == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
        _assert_chain_links(ledger)
    finally:
        ledger.dispose()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("LEDGER_DB", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL")}


@pytest.mark.timeout(60)
def test_a_claim_does_not_wait_for_another_process_event_transaction(pg_url):
    """Event writers serialise on the ledger_totals row (the hash chain needs one order); claims
    write no events, so on PostgreSQL they take only the job rows they lease."""
    writer_ledger, claimer_ledger = open_ledger(pg_url), open_ledger(pg_url)
    writer, claimer = Store(writer_ledger), Store(claimer_ledger)
    holding, release = threading.Event(), threading.Event()

    def hold_the_chain() -> None:
        with writer.transaction() as tx:
            tx.append(schema.runs, ("run-w", "t", "h", 1, "p1", "f1", "{}"))
            holding.set()
            release.wait(30)

    try:
        writer.plan_jobs(make_jobs(4))
        thread = threading.Thread(target=hold_the_chain, daemon=True)
        thread.start()
        assert holding.wait(10)
        started = time.monotonic()
        jobs = claimer.claim("run-c", 2, time.time(), 60)
        waited = time.monotonic() - started
        assert len(jobs) == 2
        assert waited < 5, f"the claim waited {waited:.1f}s for the event writer"
        # An event write from the claimer does wait: the chain has one order.
        done = threading.Event()

        def append_event() -> None:
            claimer.start_run("run-c", "h", 2, "p1", "f1", {})
            done.set()

        other = threading.Thread(target=append_event, daemon=True)
        other.start()
        assert not done.wait(0.5)
        release.set()
        thread.join(10)
        assert done.wait(10)
        _assert_chain_links(writer_ledger)
    finally:
        release.set()
        writer.close()
        claimer.close()
        writer_ledger.dispose()
        claimer_ledger.dispose()
