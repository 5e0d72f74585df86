"""Crash safety of `python cli.py run`: kill -9 at any moment and Ctrl-C, on real processes.

After a kill nothing accepted is lost or duplicated, nothing accepted is requested again, and the
requests that were in flight show as "outcome unknown (may have been billed)".
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, planned_ledger, run_cli
from ledger import queries
from ledger.db import open_ledger
from ledger.simulator import SimConfig, Simulator

KEY = "sk-or-v1-crash-test-key-77aa"
CONCURRENCY = 4


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    server = Simulator(SimConfig.from_kwargs(latency_ms=100, seed=11, p_correction=0.1))
    server.start()
    yield server
    server.stop()


def cli_env(sim: Simulator, ledger_path: Path) -> dict[str, str]:
    return {"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": sim.base_url,
            "LEDGER_DB": str(ledger_path)}


def start_run(sim: Simulator, ledger_path: Path, *args: str) -> subprocess.Popen[str]:
    """`python cli.py run` in the background, as a user would start it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LEDGER_DB", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL")}
    env.update(cli_env(sim, ledger_path))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", "--quiet", "--concurrency",
         str(CONCURRENCY), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test suite started in the background (`cmd &` without job
        # control) inherits an ignored SIGINT, which Python then never turns into Ctrl-C.
        preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def query(ledger_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read while another process writes (WAL readers never block the writer)."""
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def accepted(ledger_path: Path) -> set[str]:
    return {r[0] for r in query(ledger_path, "SELECT job_id FROM acceptances")}


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.02)


def status_json(sim: Simulator, ledger_path: Path) -> dict[str, Any]:
    done = run_cli("status", "--format", "json", env=cli_env(sim, ledger_path))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status(ledger_path: Path) -> dict[str, Any]:
    """What `status` reports, read in this process (the CLI is checked once at the end)."""
    ledger = open_ledger(str(ledger_path), readonly=True)
    try:
        return queries.status(ledger).as_dict()
    finally:
        ledger.dispose()


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    return planned_ledger(tmp_path / "ledger.db", 60)


def max_attempt_seq(ledger_path: Path) -> int:
    return query(ledger_path, "SELECT COALESCE(MAX(seq), 0) FROM attempts")[0][0]


def requested_since(ledger_path: Path, seq: int) -> set[str]:
    return {r[0] for r in query(ledger_path, "SELECT job_id FROM attempts WHERE seq > ?", seq)}


def test_kill_9_three_times_then_finish(planned: Path, sim: Simulator) -> None:
    ledger_path = planned
    unknown_total = 0
    for _ in range(3):
        before, seq_before = accepted(ledger_path), max_attempt_seq(ledger_path)
        proc = start_run(sim, ledger_path)
        try:
            wait_for(lambda: len(accepted(ledger_path)) >= len(before) + 4)
            # Land the kill while requests are in flight, not between them.
            wait_for(lambda: sim.stats()["in_flight"] > 0, timeout=5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        at_kill = accepted(ledger_path)
        assert before <= at_kill  # nothing accepted was lost
        assert not requested_since(ledger_path, seq_before) & before

        st = status(ledger_path)
        assert st["accepted"] == len(at_kill)
        # What the killed process had in flight: it may have been billed, nobody knows.
        assert 0 <= st["outcome_unknown"] - unknown_total <= CONCURRENCY
        unknown_total = st["outcome_unknown"]
        assert query(ledger_path, "SELECT COUNT(*) FROM open_attempts") == [(unknown_total,)]

    # The next start finds the dead run (its pid is gone) and takes its jobs at once.
    seq_before = max_attempt_seq(ledger_path)
    finish = start_run(sim, ledger_path)
    try:
        out, err = finish.communicate(timeout=60)
    finally:
        if finish.poll() is None:
            finish.kill()
    assert finish.returncode == 0, err
    assert "stopped: done" in out
    assert not requested_since(ledger_path, seq_before) & at_kill

    # Every job accepted exactly once; no job with an acceptance was requested after it.
    assert len(accepted(ledger_path)) == 60
    assert query(ledger_path, "SELECT COUNT(*) FROM acceptances") == [(60,)]
    late = query(ledger_path, """
        SELECT COUNT(*) FROM attempts a JOIN acceptances acc ON acc.job_id = a.job_id
        WHERE a.seq > acc.seq""")
    assert late == [(0,)]
    stops = query(ledger_path, "SELECT reason FROM run_stops ORDER BY seq")
    assert [r[0] for r in stops] == ["died", "died", "died", "done"]
    st = status_json(sim, ledger_path)
    assert st["accepted"] == 60 and st["remaining"] == 0
    assert st["outcome_unknown"] == unknown_total > 0
    table = run_cli("status", env=cli_env(sim, ledger_path))
    assert "outcome unknown (may have been billed)" in table.stdout


def test_ctrl_c_stops_gracefully_with_exit_130(planned: Path, sim: Simulator) -> None:
    ledger_path = planned
    proc = start_run(sim, ledger_path)
    try:
        wait_for(lambda: len(accepted(ledger_path)) >= 4)
        wait_for(lambda: sim.stats()["in_flight"] > 0, timeout=5)
        requests_at_signal = sim.stats()["requests"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out + err
    # At most a worker already past its last check sends one more; those in flight finished
    # and were recorded.
    assert sim.stats()["requests"] <= requests_at_signal + CONCURRENCY
    (run_id,) = [r[0] for r in query(ledger_path, "SELECT run_id FROM runs")]
    assert query(ledger_path, "SELECT reason, exit_code FROM run_stops WHERE run_id = ?",
                 run_id) == [("interrupted", 130)]
    assert query(ledger_path, "SELECT COUNT(*) FROM open_attempts") == [(0,)]
    missing = query(ledger_path, """
        SELECT COUNT(*) FROM attempts a
        WHERE NOT EXISTS (SELECT 1 FROM attempt_outcomes o WHERE o.attempt_id = a.attempt_id)""")
    assert missing == [(0,)]
    sent = query(ledger_path, "SELECT COUNT(*) FROM attempt_outcomes "
                              "WHERE error_class != 'not_sent'")[0][0]
    assert sent == sim.stats()["requests"]
    assert query(ledger_path, "SELECT COUNT(*) FROM job_state WHERE lease_owner IS NOT NULL") \
        == [(0,)]


def test_sigterm_stops_like_ctrl_c(planned: Path, sim: Simulator) -> None:
    """`kill PID`, `timeout`, `docker stop` and systemd send SIGTERM. It used to kill the run on
    the spot (exit -15, no stop recorded): every request in flight was billed and left as
    'outcome unknown'. Now it stops the run as Ctrl-C does."""
    ledger_path = planned
    proc = start_run(sim, ledger_path)
    try:
        wait_for(lambda: len(accepted(ledger_path)) >= 4)
        wait_for(lambda: sim.stats()["in_flight"] > 0, timeout=5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted by SIGTERM" in out + err
    assert query(ledger_path, "SELECT reason, exit_code FROM run_stops") == [("interrupted", 130)]
    assert query(ledger_path, "SELECT COUNT(*) FROM open_attempts") == [(0,)]
    sent = query(ledger_path, "SELECT COUNT(*) FROM attempt_outcomes "
                              "WHERE error_class != 'not_sent'")[0][0]
    assert sent == sim.stats()["requests"]
    billed = query(ledger_path, "SELECT spend_usd FROM ledger_totals")[0][0]
    assert billed == pytest.approx(sim.stats()["billed_usd"], abs=1e-12)
