"""Parallel `run` processes on one ledger share the work: no job is worked twice, nothing is
locked out.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, make_jobs, planned_ledger
from ledger.db import open_ledger
from ledger.simulator import SimConfig, Simulator
from ledger.store import Store

KEY = "sk-or-v1-two-runs-key-31c4"
JOBS_PER_RUN = 30


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    server = Simulator(SimConfig.from_kwargs(latency_ms=50, seed=5, p_correction=0.1,
                                             p_500=0.05))
    server.start()
    yield server
    server.stop()


def start_run(sim: Simulator, ledger_path: Path, concurrency: int = 4
              ) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LEDGER_DB", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL")}
    env.update({"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": sim.base_url})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", "--db", str(ledger_path), "--quiet",
         "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_runs(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    """Wait for every run process; each must exit 0 and never meet a locked database.
    Returns their stdouts."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "database is locked" not in err.lower()
    return [out for out, _err in outputs]


def accepted_by_run(ledger_path: Path) -> dict[str, int]:
    """Accepted jobs per run id (a run that accepted none is absent)."""
    return dict(query(ledger_path, "SELECT a.run_id, COUNT(*) FROM acceptances acc "
                                   "JOIN attempts a ON a.attempt_id = acc.attempt_id "
                                   "GROUP BY a.run_id"))


def query(ledger_path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("n_runs", [2, 4])
def test_parallel_runs_on_one_ledger_never_work_the_same_job(tmp_path: Path, sim: Simulator,
                                                             n_runs: int) -> None:
    ledger_path = tmp_path / "ledger.db"
    jobs = JOBS_PER_RUN * n_runs
    planned_ledger(ledger_path, jobs)
    outputs = finish_runs([start_run(sim, ledger_path) for _ in range(n_runs)])
    assert all("stopped: done" in out for out in outputs)

    assert query(ledger_path, "SELECT COUNT(*) FROM acceptances") == [(jobs,)]
    assert query(ledger_path, "SELECT COUNT(DISTINCT job_id) FROM acceptances") == [(jobs,)]
    assert query(ledger_path, "SELECT state, COUNT(*) FROM job_state GROUP BY state") == [
        ("accepted", jobs)]
    runs_by_job: dict[str, set[str]] = defaultdict(set)
    for job_id, run_id in query(ledger_path, "SELECT job_id, run_id FROM attempts"):
        runs_by_job[job_id].add(run_id)
    # Leases last far longer than this test: no job was ever taken from another run.
    assert all(len(runs) == 1 for runs in runs_by_job.values())
    assert len(runs_by_job) == jobs
    # Every request the server saw is recorded once.
    assert query(ledger_path, "SELECT COUNT(*) FROM attempts") == [(sim.stats()["requests"],)]
    assert query(ledger_path, "SELECT COUNT(*) FROM open_attempts") == [(0,)]
    stops = query(ledger_path, "SELECT reason, exit_code FROM run_stops")
    assert stops == [("done", 0)] * n_runs
    assert query(ledger_path, "SELECT COUNT(*) FROM runs") == [(n_runs,)]
    # At least two really worked side by side (the test would prove nothing if each started
    # after the last ended). A run that starts late may legitimately find every job taken.
    per_run = accepted_by_run(ledger_path)
    assert sum(per_run.values()) == jobs
    assert len([n for n in per_run.values() if n > 0]) >= 2


def test_two_saturated_runs_on_one_ledger_both_get_the_write_lock(tmp_path: Path) -> None:
    """Two runs of 64 workers against a zero-latency server: each writer always has writes
    queued, so it would take SQLite's write lock straight back after every commit; the pause
    it leaves then is what lets the other process in. Both must finish, both with a fair share
    of the work."""
    server = Simulator(SimConfig.from_kwargs(latency_ms=0, seed=9))
    server.start()
    ledger_path = planned_ledger(tmp_path / "ledger.db", 3000)
    try:
        finish_runs([start_run(server, ledger_path, concurrency=64) for _ in range(2)])
    finally:
        server.stop()
    per_run = accepted_by_run(ledger_path)
    assert sum(per_run.values()) == 3000
    # Each did a fair share. Measured: 1,464-1,472 for the smaller share with the pause; with
    # no pause, 64-1,280 (and once the second run got none at all).
    assert len(per_run) == 2 and min(per_run.values()) >= 1000, per_run


def test_a_lease_from_another_host_is_respected_until_it_expires(tmp_path: Path, sim: Simulator,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    from ledger.launch import run
    from ledger.runconfig import RunConfig

    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    store = Store(ledger)
    try:
        store.plan_jobs(make_jobs(4))
        # A run on another machine holds two jobs; its pid means nothing here, only its lease.
        store.start_run("elsewhere", "another-host", os.getpid(), "p", "f", {})
        held = {j.job_id for j in store.claim("elsewhere", 2, time.time(), lease_s=1.5)}
        cfg = RunConfig(concurrency=2, backoff_base_s=0.01, backoff_cap_s=0.1)
        first = run(ledger, cfg, base_url=sim.base_url, quiet=True).result
        assert first.exit_code == 0 and first.stats.accepted == 2
        with ledger.engine.connect() as conn:
            requested = {r[0] for r in conn.exec_driver_sql("SELECT job_id FROM attempts")}
        assert not requested & held
        time.sleep(1.6)
        second = run(ledger, cfg, base_url=sim.base_url, quiet=True).result
        assert second.stats.accepted == 2
        with ledger.engine.connect() as conn:
            states = conn.exec_driver_sql("SELECT state, COUNT(*) FROM job_state "
                                          "GROUP BY state").all()
        assert states == [("accepted", 4)]
    finally:
        store.close()
        ledger.dispose()


def test_status_counts_only_live_unexpired_leases_as_in_flight(tmp_path: Path) -> None:
    from ledger.queries import status

    ledger = open_ledger(str(tmp_path / "ledger.db"))
    store = Store(ledger)
    try:
        store.plan_jobs(make_jobs(3, l1="korean") + make_jobs(5))
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        now = time.time()
        store.start_run("elsewhere", "another-host", os.getpid(), "p", "f", {})
        store.start_run("dead-here", socket.gethostname(), gone.pid, "p", "f", {})
        store.start_run("lapsed", "another-host", os.getpid(), "p", "f", {})
        live = store.claim("elsewhere", 4, now, lease_s=600)
        store.claim("dead-here", 2, now, lease_s=600)  # its process is gone: not in flight
        store.claim("lapsed", 1, now - 700, lease_s=600)  # its lease ran out 100 s ago
        st = status(ledger, now=now)
    finally:
        store.close()
        ledger.dispose()
    expected = {"korean": sum(j.l1 == "korean" for j in live),
                "spanish": sum(j.l1 == "spanish" for j in live)}
    assert expected == {"korean": 3, "spanish": 1}
    assert {r.l1: r.in_flight for r in st.by_l1} == expected
    assert st.total.in_flight == 4
    assert [(r.l1, r.planned, r.remaining, r.accepted, r.failed) for r in st.by_l1] == [
        ("korean", 3, 3, 0, 0), ("spanish", 5, 5, 0, 0)]
    assert (st.total.planned, st.total.remaining) == (8, 8)


def test_opening_the_ledger_twice_in_one_process_keeps_its_wal_safe_from_other_processes(
        tmp_path: Path) -> None:
    """A second open of the same file in a process must not drop the locks its first
    connections hold: otherwise another process, closing its last connection, believes it is
    the last user and deletes the WAL and shared memory under them."""
    from conftest import run_cli

    path = tmp_path / "ledger.db"
    first = open_ledger(str(path))
    store = Store(first)
    store.plan_jobs(make_jobs(3))
    store.close()
    second = open_ledger(str(path))
    second.dispose()
    done = run_cli("plan", "--target", "6", "--db", str(path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ledger.db-wal").exists() and (tmp_path / "ledger.db-shm").exists()
    with first.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM jobs").scalar() == 6
    first.dispose()


def test_a_run_takes_over_the_jobs_of_a_run_that_died_beside_it(tmp_path: Path) -> None:
    """Two runs on one ledger; one is killed -9 while the other works. The survivor used to end
    'done (exit 0): no open job left' with the dead run's leased jobs still open (until a
    later `run` or the 15-minute lease expiry): now, out of jobs, it records the dead run as
    died, frees its leases and finishes its jobs."""
    ledger_path = planned_ledger(tmp_path / "ledger.db", 80)
    server = Simulator(SimConfig.from_kwargs(latency_ms=200, seed=5))
    server.start()
    try:
        doomed = start_run(server, ledger_path, concurrency=4)
        deadline = time.monotonic() + 60
        while not (ledger_path.exists() and query(
                ledger_path, "SELECT COUNT(*) FROM acceptances")[0][0] >= 4):
            assert time.monotonic() < deadline and doomed.poll() is None
            time.sleep(0.05)
        survivor = start_run(server, ledger_path, concurrency=1)
        time.sleep(1.5)  # the survivor has started and claimed its first jobs
        doomed.kill()
        doomed.communicate(timeout=30)
        (out,) = finish_runs([survivor])
    finally:
        server.stop()
    assert "no open job left" in out
    assert query(ledger_path, "SELECT state, COUNT(*) FROM job_state GROUP BY state") == [
        ("accepted", 80)]
    assert query(ledger_path, "SELECT reason FROM run_stops ORDER BY seq") == [
        ("died",), ("done",)]
