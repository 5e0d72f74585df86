"""The run loop's error policy, proven against the real simulator on loopback.

Each test scripts the simulator's answers, runs the real loop through the library (small
backoff for speed) and checks what the ledger recorded and what reached the server.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import make_jobs
from ledger.client import OpenRouterClient
from ledger.db import open_ledger
from ledger.launch import prices_for, run
from ledger.runconfig import RunConfig
from ledger.runner import Runner, RunResult
from ledger.simulator import SimConfig, Simulator

KEY = "sk-or-v1-policy-test-key-0123456789"
A, B, C = "google/gemini-2.0-flash-001", "anthropic/claude-3.5-haiku", "moonshotai/kimi-k2.5"
FAST = {"backoff_base_s": 0.01, "backoff_cap_s": 0.1}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    open_ledger(str(path)).dispose()
    return path


@pytest.fixture
def ledger_path(tmp_path: Path, template_db: Path) -> Path:
    """A fresh migrated ledger file: migrating once per module keeps each test fast."""
    path = tmp_path / "ledger.db"
    shutil.copy(template_db, path)
    return path


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)


@pytest.fixture
def start_sim():  # type: ignore[no-untyped-def]
    sims: list[Simulator] = []

    def start(**options: Any) -> Simulator:
        sim = Simulator(SimConfig.from_kwargs(**{"latency_ms": 2, **options}))
        sim.start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


def go(ledger, sim: Simulator, **config: Any) -> RunResult:  # type: ignore[no-untyped-def]
    cfg = RunConfig(**{**FAST, "concurrency": 1, **config})
    return run(ledger, cfg, base_url=sim.base_url, quiet=True).result


def rows(ledger, sql: str, **params: Any) -> list[Any]:  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def attempts(ledger) -> list[Any]:  # type: ignore[no-untyped-def]
    """Every attempt with its outcome and verdict, in the order they were started."""
    return rows(ledger, """
        SELECT a.attempt_id, a.job_id, a.run_id, a.model_requested, a.chain_position, a.seq,
               o.http_status, o.error_class, o.limit_source, o.retry_after_s, o.cost_usd,
               o.cost_source, o.message, o.seq AS outcome_seq,
               v.passed, v.reasons_json, acc.job_id AS accepted_job
        FROM attempts a
        LEFT JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
        LEFT JOIN verdicts v ON v.attempt_id = a.attempt_id
        LEFT JOIN acceptances acc ON acc.attempt_id = a.attempt_id
        ORDER BY a.seq""")


def job_states(ledger) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(rows(ledger, "SELECT job_id, state FROM job_state"))


def spend(ledger) -> float:  # type: ignore[no-untyped-def]
    return rows(ledger, "SELECT spend_usd FROM ledger_totals")[0][0]


def stops(ledger) -> list[Any]:  # type: ignore[no-untyped-def]
    return rows(ledger, "SELECT run_id, reason, exit_code, limit_source, message FROM run_stops "
                        "ORDER BY seq")


# --- transient failures -------------------------------------------------------------------

@pytest.mark.parametrize("token, error_class", [
    ("429", "rate_limited"), ("500", "server_error"), ("502", "server_error"),
    ("503", "server_error"), ("408", "timeout"), ("reset", "connection_error"),
])
def test_transient_failure_is_retried_on_the_same_model(ledger, store, start_sim, token: str,
                                                        error_class: str) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim(retry_after_s=0.05)
    sim.script([token, "ok"])
    result = go(ledger, sim)
    assert result.exit_code == 0 and result.reason == "done"
    first, second = attempts(ledger)
    assert (first.error_class, first.model_requested, first.chain_position) == (error_class, A, 0)
    assert first.passed is None and first.accepted_job is None
    assert (second.error_class, second.model_requested, second.chain_position) == ("ok", A, 0)
    assert second.accepted_job == first.job_id
    assert sim.stats()["requests"] == 2


def test_a_job_backing_off_does_not_hold_its_worker(ledger, store, start_sim) -> None:
    """One worker, three jobs, 300 ms answers. The first job's 500 sets it aside for its backoff
    (at most 0.25 s): the worker sends the second job meanwhile, then takes the first one back
    as soon as its backoff is over, before the third (fresh) job."""
    store.plan_jobs(make_jobs(3))
    sim = start_sim(latency_ms=300)
    sim.script(["500", "ok", "ok", "ok"])
    result = go(ledger, sim, backoff_base_s=0.25, backoff_cap_s=0.25)
    assert result.reason == "done" and set(job_states(ledger).values()) == {"accepted"}
    got = attempts(ledger)
    assert [a.error_class for a in got] == ["server_error", "ok", "ok", "ok"]
    assert [a.job_id == got[0].job_id for a in got] == [True, False, True, False]


def test_the_run_says_why_its_workers_waited(ledger, store, start_sim) -> None:
    """One worker, two jobs: the first one's 429 (Retry-After 0.4 s) pauses the worker before it
    may send the second; the summary names the pause and how long it lasted."""
    store.plan_jobs(make_jobs(2))
    sim = start_sim(retry_after_s=0.4)
    sim.script(["429", "ok", "ok"])
    config = RunConfig(**{**FAST, "backoff_cap_s": 2.0}, concurrency=1)
    launch = run(ledger, config, base_url=sim.base_url, quiet=True)
    waited = launch.result.stats.waited_s
    assert launch.result.reason == "done"
    assert 0.3 <= waited["429/402 pause"] < 2.0
    assert "workers waited: 429/402 pause" in launch.summary


def test_rpm_spacing_is_counted_as_a_wait(ledger, store, start_sim) -> None:
    """Three workers asking at once get slots 0.1 s apart (rpm 600): the 2nd waits about
    0.1 s and the 3rd about 0.2 s. (With one worker, its own work between requests is taken off
    each wait, so the sum said more about the machine's speed than about the spacing.)"""
    store.plan_jobs(make_jobs(3))
    sim = start_sim()
    result = go(ledger, sim, rpm=600, concurrency=3)
    assert result.reason == "done"
    assert 0.2 <= result.stats.waited_s["rpm spacing"] < 1.0
    assert "429/402 pause" not in result.stats.waited_s


def test_workers_with_no_job_left_count_the_run_tail_as_a_wait(ledger, store,
                                                               start_sim) -> None:
    """Four workers, one job answered after 0.4 s: the three that find nothing to start wait
    for it, about 1.2 worker-seconds in all, and the summary names that wait."""
    store.plan_jobs(make_jobs(1))
    sim = start_sim(latency_ms=400)
    launch = run(ledger, RunConfig(**FAST, concurrency=4), base_url=sim.base_url, quiet=True)
    waited = launch.result.stats.waited_s
    assert launch.result.reason == "done" and launch.result.stats.accepted == 1
    assert 0.9 <= waited["no job left to start"] < 3.0
    assert "workers waited: no job left to start" in launch.summary
    assert set(waited) == {"no job left to start", "intent commit"}


def test_a_lone_worker_has_no_run_tail_to_wait_for(ledger, store, start_sim) -> None:
    """The last worker to run out of jobs ends the run: nothing is left for it to wait on."""
    store.plan_jobs(make_jobs(2))
    sim = start_sim(latency_ms=100)
    result = go(ledger, sim, concurrency=1)
    assert result.reason == "done" and result.stats.accepted == 2
    assert "no job left to start" not in result.stats.waited_s


def test_each_intent_commit_is_counted_as_a_wait(ledger, store, start_sim) -> None:
    """One worker, three jobs at 200 ms: three intents committed before their requests; the
    time they took is counted, and it is the ledger's, not the API's (far below one answer)."""
    store.plan_jobs(make_jobs(3))
    sim = start_sim(latency_ms=200)
    launch = run(ledger, RunConfig(**FAST, concurrency=1), base_url=sim.base_url, quiet=True)
    committed = launch.result.stats.waited_s["intent commit"]
    assert launch.result.stats.attempts == 3
    assert 0.0 < committed < 0.2
    assert "workers waited: intent commit" in launch.summary


def test_after_tries_per_model_the_next_model_is_tried(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["500", "503", "reset", "ok"])
    go(ledger, sim, tries_per_model=3)
    got = [(a.model_requested, a.chain_position, a.error_class) for a in attempts(ledger)]
    assert got == [(A, 0, "server_error"), (A, 0, "server_error"), (A, 0, "connection_error"),
                   (B, 1, "ok")]
    assert sim.stats()["by_model"][B]["requests"] == 1


def test_tries_per_model_is_a_setting(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["500", "ok"])
    go(ledger, sim, tries_per_model=1)
    assert [(a.model_requested, a.error_class) for a in attempts(ledger)] == [
        (A, "server_error"), (B, "ok")]


def test_a_timed_out_request_is_recorded_and_retried(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim(hang_s=3)
    sim.script(["hang", "ok"])
    with OpenRouterClient(sim.base_url, KEY, timeout_s=0.3) as client:
        runner = Runner(ledger, client, prices_for(ledger), RunConfig(**FAST, concurrency=1))
        runner.start([])
        result = runner.run()
    assert result.exit_code == 0
    first, second = attempts(ledger)
    assert first.error_class == "timeout" and first.http_status is None
    assert second.error_class == "ok" and second.accepted_job is not None


# --- Retry-After --------------------------------------------------------------------------

@pytest.mark.parametrize("token, low, high", [
    ("429", 1.0, 1.0), ("429_date", 0.0, 1.0), ("429_nohdr", None, None),
    ("429_garbage", None, None),
])
def test_retry_after_in_every_form(ledger, store, start_sim, token: str, low, high) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim(retry_after_s=1.0)
    sim.script([token, "ok"])
    started = time.monotonic()
    go(ledger, sim, backoff_base_s=0.01, backoff_cap_s=5.0)
    elapsed = time.monotonic() - started
    first, second = attempts(ledger)
    assert first.error_class == "rate_limited" and second.chain_position == 0
    if low is None:
        # Missing or unreadable: our own (short) backoff, not a guess at the server's wish.
        assert first.retry_after_s is None
        assert elapsed < 0.8
    else:
        assert low <= first.retry_after_s <= high
        assert elapsed >= first.retry_after_s - 0.05


def test_a_huge_retry_after_is_capped(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim(retry_after_s=3600)
    sim.script(["429", "ok"])
    started = time.monotonic()
    result = go(ledger, sim, backoff_cap_s=0.2)
    assert result.exit_code == 0
    assert time.monotonic() - started < 3
    first = attempts(ledger)[0]
    assert 0 < first.retry_after_s <= 120


def test_a_429_pauses_every_worker(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(24))
    sim = start_sim(latency_ms=20, retry_after_s=1.0)
    sim.script(["ok", "ok", "ok", "ok", "429"])
    box: dict[str, RunResult] = {}
    worker = threading.Thread(target=lambda: box.setdefault(
        "r", go(ledger, sim, concurrency=4, backoff_base_s=0.01, backoff_cap_s=5.0)))
    worker.start()
    deadline = time.monotonic() + 10
    while "429" not in sim.stats()["by_status"]:
        assert time.monotonic() < deadline, "the scripted 429 never arrived"
        time.sleep(0.002)
    at_429 = sim.stats()["requests"]
    time.sleep(0.7)
    during = sim.stats()["requests"] - at_429
    worker.join(30)
    # Without a shared pause 3 workers would send ~0.7 s / 20 ms = 35 requests each by now;
    # at most the requests already past the pause when the 429 landed may arrive.
    assert during <= 3
    assert box["r"].exit_code == 0
    assert set(job_states(ledger).values()) == {"accepted"}


# --- permanent for this model -------------------------------------------------------------

def test_400_and_403_go_to_the_next_model_without_retry(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["400", "403", "ok"])
    go(ledger, sim)
    got = [(a.model_requested, a.chain_position, a.http_status, a.error_class)
           for a in attempts(ledger)]
    assert got == [(A, 0, 400, "bad_request"), (B, 1, 403, "forbidden"), (C, 2, 200, "ok")]
    by_model = sim.stats()["by_model"]
    assert [by_model[m]["requests"] for m in (A, B, C)] == [1, 1, 1]


def test_an_exhausted_chain_fails_the_job_and_the_run_goes_on(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(2))
    sim = start_sim()
    sim.script(["400", "403", "400"])
    result = go(ledger, sim)
    assert result.exit_code == 0 and result.stats.failed_jobs == 1
    states = job_states(ledger)
    failed = [j for j, s in states.items() if s == "failed"]
    assert len(failed) == 1 and list(states.values()).count("accepted") == 1
    (reasons_json,), = rows(ledger, "SELECT reasons_json FROM job_failures WHERE job_id = :j",
                            j=failed[0])
    reasons = json.loads(reasons_json)
    assert reasons == [f"{A}: bad_request", f"{B}: forbidden", f"{C}: bad_request"]


def test_retry_failed_tries_failed_jobs_again(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["400", "400", "400"])
    go(ledger, sim)
    assert set(job_states(ledger).values()) == {"failed"}
    go(ledger, sim)  # without --retry-failed a failed job stays failed, at no cost
    assert sim.stats()["requests"] == 3
    result = go(ledger, sim, retry_failed=True)
    assert result.stats.accepted == 1
    assert set(job_states(ledger).values()) == {"accepted"}
    assert len(rows(ledger, "SELECT * FROM job_reopens")) == 1
    assert sim.stats()["requests"] == 4


# --- stop the run -------------------------------------------------------------------------

def test_401_stops_the_run_with_a_message_about_the_key(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(3))
    sim = start_sim()
    sim.script(["401"])
    result = go(ledger, sim)
    assert (result.reason, result.exit_code) == ("key", 5)
    assert "OPENROUTER_API_KEY" in result.message
    assert sim.stats()["requests"] == 1
    assert [(s.reason, s.exit_code) for s in stops(ledger)] == [("key", 5)]
    # Nothing stays leased: the next run can take every job at once.
    assert rows(ledger, "SELECT COUNT(*) FROM job_state WHERE lease_owner IS NOT NULL")[0][0] == 0
    assert list(job_states(ledger).values()).count("open") == 3


@pytest.mark.parametrize("token, limit_source", [
    ("402_credits", "openrouter_credits"), ("402_key", "openrouter_key_limit")])
def test_402_stops_the_whole_run_at_once(ledger, store, start_sim, token: str,
                                         limit_source: str) -> None:
    store.plan_jobs(make_jobs(16))
    sim = start_sim(latency_ms=100)
    sim.script(["ok"] * 5 + [token])
    result = go(ledger, sim, concurrency=4)
    assert (result.reason, result.exit_code, result.limit_source) == ("credit", 3, limit_source)
    st = sim.stats()
    assert st["by_status"].get("402") == 1  # never retried, no other model asked
    # At most the requests already in flight when the 402 came back reached the server.
    assert st["requests"] <= 6 + 3
    got = attempts(ledger)
    (halt,) = [a for a in got if a.http_status == 402]
    assert halt.limit_source == limit_source and halt.accepted_job is None
    assert [a for a in got if a.job_id == halt.job_id][-1] == halt
    # Every request that left is recorded; what started after the 402 landed never left.
    sent = [a for a in got if a.error_class != "not_sent"]
    assert len(sent) == st["requests"]
    assert all(a.error_class == "not_sent" for a in got if a.seq > halt.outcome_seq)
    assert all(a.error_class is not None for a in got)
    assert rows(ledger, "SELECT COUNT(*) FROM open_attempts")[0][0] == 0
    ((_, reason, code, source, message),) = stops(ledger)
    assert (reason, code, source) == ("credit", 3, limit_source)
    assert halt.message in message and "python cli.py run" in message
    assert spend(ledger) == pytest.approx(st["billed_usd"])


def test_in_flight_402_waits_for_retry_after_and_retries(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim(retry_after_s=0.3)
    sim.script(["402_inflight", "ok"])
    started = time.monotonic()
    result = go(ledger, sim, backoff_cap_s=2.0)
    assert result.exit_code == 0 and time.monotonic() - started >= 0.28
    first, second = attempts(ledger)
    assert (first.http_status, first.error_class, first.limit_source, first.retry_after_s) == (
        402, "credit_in_flight", "openrouter_in_flight_budget", 0.3)
    assert (second.model_requested, second.error_class) == (A, "ok")
    assert second.accepted_job is not None


# --- errors inside HTTP 200 ---------------------------------------------------------------

@pytest.mark.parametrize("token, error_class", [
    ("error_in_200", "error_in_200"), ("finish_error", "error_in_200"), ("empty", "no_choices"),
    ("malformed", "malformed"),
])
def test_errors_inside_200_are_failed_attempts_never_accepted(ledger, store, start_sim,
                                                              token: str,
                                                              error_class: str) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script([token, token])
    result = go(ledger, sim, models=(A, B), tries_per_model=1)
    assert result.exit_code == 0 and result.stats.failed_jobs == 1
    got = attempts(ledger)
    assert [(a.http_status, a.error_class) for a in got] == [(200, error_class)] * 2
    assert all(a.passed is None and a.accepted_job is None for a in got)
    assert rows(ledger, "SELECT COUNT(*) FROM acceptances")[0][0] == 0
    assert set(job_states(ledger).values()) == {"failed"}
    # The server billed these generations; the ledger counts them.
    assert all(a.cost_usd > 0 for a in got)


def test_length_and_content_filter_are_rejections_with_their_cost(ledger, store,
                                                                  start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["length", "content_filter", "ok"])
    go(ledger, sim, rejections_per_model=2)
    length, content_filter, ok = attempts(ledger)
    assert (length.error_class, length.passed) == ("length", 0)
    assert "truncated" in json.loads(length.reasons_json)
    assert (content_filter.error_class, content_filter.passed) == ("content_filter", 0)
    assert "content_filter" in json.loads(content_filter.reasons_json)
    assert length.cost_usd > 0 and content_filter.cost_usd > 0
    assert length.cost_source == content_filter.cost_source == "response"
    # Two rejections on one model: the next model gets the job.
    assert (ok.model_requested, ok.chain_position, ok.passed) == (B, 1, 1)
    assert ok.accepted_job is not None
    assert spend(ledger) == pytest.approx(sim.stats()["billed_usd"])


def test_a_quality_rejection_retries_the_same_model(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["correction", "binary", "ok"])
    go(ledger, sim, rejections_per_model=3)
    correction, binary, ok = attempts(ledger)
    assert correction.passed == 0 and "explicit_correction" in json.loads(correction.reasons_json)
    assert binary.passed == 0 and json.loads(binary.reasons_json) == ["unparseable"]
    assert [a.chain_position for a in (correction, binary, ok)] == [0, 0, 0]
    assert ok.accepted_job is not None


def test_a_response_without_usage_gets_an_estimated_cost(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["no_usage"])
    go(ledger, sim)
    (only,) = attempts(ledger)
    assert only.accepted_job is not None and only.cost_source == "estimate"
    billed = sim.stats()["billed_usd"]
    # An estimate, so not exact, but of the right size rather than free.
    assert billed / 3 < only.cost_usd < billed * 3


def test_spend_matches_the_server_bill_under_random_faults(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(30))
    sim = start_sim(seed=3, retry_after_s=0.01, p_429=0.05, p_500=0.05, p_502=0.05, p_408=0.05,
                    p_error_in_200=0.05, p_finish_error=0.05, p_length=0.05, p_correction=0.1,
                    p_content_filter=0.05, p_empty=0.05, p_reset=0.05, p_in_flight_402=0.05)
    result = go(ledger, sim, concurrency=4)
    assert result.exit_code == 0
    st = sim.stats()
    got = attempts(ledger)
    assert len(got) == st["requests"]
    assert spend(ledger) == pytest.approx(st["billed_usd"])
    assert rows(ledger, "SELECT COUNT(*) FROM acceptances")[0][0] == st["by_status"]["200"] - \
        sum(1 for a in got if a.http_status == 200 and a.accepted_job is None)
    states = job_states(ledger)
    assert set(states.values()) <= {"accepted", "failed"} and len(states) == 30


def test_concurrency_bounds_requests_in_flight(ledger, store, start_sim) -> None:
    store.plan_jobs(make_jobs(16))
    sim = start_sim(latency_ms=60)
    go(ledger, sim, concurrency=4)
    assert sim.stats()["max_in_flight"] == 4
    assert set(job_states(ledger).values()) == {"accepted"}


def test_an_in_flight_402_without_retry_after_stops_the_run(ledger, store) -> None:
    from scripted_server import ScriptedServer

    store.plan_jobs(make_jobs(2))
    body = {"error": {"code": 402, "message": "Too much credit is reserved by running requests.",
                      "metadata": {"limit_source": "openrouter_in_flight_budget"}}}
    with ScriptedServer() as server:
        server.reply(402, body)  # no Retry-After: nothing says when waiting would help
        with OpenRouterClient(server.url, KEY) as client:
            runner = Runner(ledger, client, prices_for(ledger), RunConfig(**FAST, concurrency=1))
            runner.start([])
            result = runner.run()
        assert len(server.received) == 1
    assert (result.reason, result.exit_code, result.limit_source) == (
        "credit", 3, "openrouter_in_flight_budget")
    (only,) = attempts(ledger)
    assert only.error_class == "credit_in_flight" and only.retry_after_s is None
    assert [(s.reason, s.limit_source) for s in stops(ledger)] == [
        ("credit", "openrouter_in_flight_budget")]


# --- resuming a chain and a budget that only the dearer models exceed ----------------------

def test_a_resumed_job_continues_its_chain_where_the_last_run_left_it(ledger, store,
                                                                      start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    # Run 1: model A is used up by two quality rejections, then B answers 402: the run stops.
    sim.script(["correction", "correction", "402_credits"])
    first = go(ledger, sim, models=(A, B, C), rejections_per_model=2)
    assert first.reason == "credit"
    before = len(attempts(ledger))
    # Run 2 (after a top-up) must not pay model A again for the same job: it starts at B.
    second = go(ledger, sim, models=(A, B, C), rejections_per_model=2)
    assert second.reason == "done"
    new = attempts(ledger)[before:]
    assert [a.model_requested for a in new] == [B]
    assert new[0].accepted_job == make_jobs(1)[0].job_id


def test_budget_stops_only_when_the_cheapest_model_no_longer_fits(ledger, store,
                                                                  start_sim) -> None:
    store.plan_jobs(make_jobs(3))
    sim = start_sim()
    # The first job is rejected twice on A and would need B, which this budget cannot cover;
    # the other jobs still fit on A, so the run goes on with them instead of stopping.
    sim.script(["correction", "correction"])
    result = go(ledger, sim, models=(A, B), rejections_per_model=2, budget_usd=0.0006)
    assert result.reason == "budget" and result.exit_code == 4
    states = job_states(ledger)
    assert sorted(states.values()) == ["accepted", "accepted", "open"]
    assert all(a.model_requested == A for a in attempts(ledger))
    assert spend(ledger) <= 0.0006
    # A rerun with the same budget sends nothing more.
    requests = sim.stats()["requests"]
    again = go(ledger, sim, models=(A, B), rejections_per_model=2, budget_usd=0.0006)
    assert again.exit_code == 4 and sim.stats()["requests"] == requests


def test_a_timed_out_request_counts_against_the_budget(ledger, store, start_sim) -> None:
    """A request whose answer never arrived may still be billed (shared/reference/openrouter.md:
    'A request whose response never arrived (crash, timeout) may have been billed'): the
    simulator bills a hung generation when it completes, as a provider would. Recorded as free,
    a timeout gave its reservation back, the run spent the budget again on other jobs, and the
    bill ended above --budget-usd while the ledger's spend stayed below the bill."""
    store.plan_jobs(make_jobs(12))
    sim = start_sim(hang_s=0.6)
    sim.script(["hang", "hang", "hang"])
    prices = prices_for(ledger)
    budget = 0.00045
    config = RunConfig(**FAST, concurrency=3, budget_usd=budget)
    with OpenRouterClient(sim.base_url, KEY, timeout_s=0.3) as client:
        runner = Runner(ledger, client, prices, config)
        runner.start([])
        result = runner.run()
    time.sleep(1.0)  # the hung generations complete and are billed
    billed = sim.stats()["billed_usd"]
    timeouts = [a for a in attempts(ledger) if a.error_class == "timeout"]
    assert len(timeouts) == 3 and result.reason == "budget"
    assert billed <= budget + 1e-12, f"billed ${billed:.7f} past a ${budget} budget"
    assert spend(ledger) >= billed - 1e-12, "the ledger's spend is below what was billed"


def test_answers_dearer_than_the_price_table_raise_the_reservations(ledger, store,
                                                                     start_sim) -> None:
    """Reservations are priced from the table: answers billed above it (here the server
    serves a dearer model than the one asked) let every request in flight overshoot the
    budget. Measured before: a $0.01 budget at concurrency 4 ended billed $0.0110.
    Now the run raises the model's reservations by what the answers cost, stays within the
    budget, and its summary says so."""
    store.plan_jobs(make_jobs(40))
    sim = start_sim(model_map={A: B})
    budget = 0.01
    launch = run(ledger, RunConfig(**FAST, concurrency=4, models=(A,), budget_usd=budget),
                 base_url=sim.base_url, quiet=True)
    billed = sim.stats()["billed_usd"]
    assert launch.result.reason == "budget"
    assert billed <= budget + 1e-12, f"billed ${billed:.7f} past a ${budget} budget"
    assert abs(spend(ledger) - billed) < 1e-9
    factor = launch.result.stats.underpriced[A]
    assert factor > 2.0
    assert f"answers of {A} cost up to {factor:.1f}x the price table's maximum" in launch.summary
