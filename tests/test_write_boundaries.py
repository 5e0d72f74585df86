"""A one-job run made to exit (os._exit) at each of its write transactions, just before and just
after the commit, then resumed: the ledger is consistent at every boundary, the job is accepted
exactly once, and the bill reconciles with what the ledger recorded."""

from __future__ import annotations

from pathlib import Path

from bench.reliability import TortureConfig, boundary_torture


def test_exit_at_every_write_boundary_then_resume(tmp_path: Path) -> None:
    r = boundary_torture(tmp_path, TortureConfig(latency_ms=5, fork_children=True))

    writes = r["writes_per_job_run"]
    # start run, claim, begin attempt, finish attempt, stop run at least; both phases see the
    # same transactions.
    assert writes["before"] == writes["after"] >= 5
    assert r["crashes"] == 2 * writes["before"]
    ledgers = r["crashes"] + 2           # plus the one clean run per phase that found the end
    assert r["planned"] == r["accepted"] == r["acceptances"] == ledgers
    assert r["late_attempts"] == 0
    assert r["unbilled_in_ledger"] == 0
    # A crash strands at most the one attempt in flight; only such attempts miss a bill entry.
    assert r["open_attempts"] <= r["crashes"]
    assert r["missing_generations"] <= r["open_attempts"]
    assert abs(r["spend_gap_usd"]) < 1e-9
    assert r["verify_ok"], r["verify_detail"]
