"""Crash torture, CI size: `python cli.py run` SIGKILLed at random moments and restarted until
done, then audited against the simulator's billing log and a crash-free run of the same plan.

The full-size run (50+ kills) is bench/reliability.py; this is the same code at a smaller size.
"""

from __future__ import annotations

from pathlib import Path

from bench.reliability import CONCURRENCY, TortureConfig, kill_torture

KILLS = 6


def test_random_sigkills_lose_nothing_paid_for_and_generate_nothing_twice(tmp_path: Path) -> None:
    cfg = TortureConfig(jobs=70, kills=KILLS, latency_ms=80, seed=3, max_after_start_s=0.6,
                        p_startup_kill=0.2)
    r = kill_torture(tmp_path, cfg)

    kills = r["kills"]
    assert len(kills) == KILLS
    # Each kill leaves at most `concurrency` attempts whose outcome is unknown.
    assert all(0 <= k["new_unknown"] <= CONCURRENCY for k in kills)
    # At least one kill landed while requests were in flight, or the test proves little.
    assert any(k["in_flight"] > 0 for k in kills)

    crashed, reference = r["crashed"], r["reference"]
    for a in (crashed, reference):
        assert a["accepted"] == a["planned"] == 70          # every planned job accepted ...
        assert a["acceptances"] == 70                        # ... exactly once
        assert a["late_attempts"] == 0                       # nothing requested after acceptance
        assert a["unbilled_in_ledger"] == 0
        assert abs(a["spend_gap_usd"]) < 1e-9, a
        assert a["verify_ok"], a["verify_detail"]
    # Every billed generation is in the ledger except those in flight at a kill, each of which
    # is an open attempt ("outcome unknown").
    assert crashed["missing_generations"] <= crashed["open_attempts"]
    assert crashed["open_attempts"] == sum(k["new_unknown"] for k in kills)
    assert crashed["open_attempts"] <= CONCURRENCY * KILLS
    assert reference["missing_generations"] == 0 and reference["open_attempts"] == 0

    assert r["verify_cli"]["exit"] == 0, r["verify_cli"]["output"]
    assert r["same_accepted_jobs"]
    assert r["export_lines"] == 70 and r["export_equal"]
    assert r["valid_accepted"] == {"crashed": 70, "reference": 70}
