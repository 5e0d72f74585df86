"""The audit views (migration 0002): hand-written event sequences through the Store give exactly
the expected view rows, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import time

import pytest

pytest.register_assert_rewrite("backends", "pg_server")

from conftest import make_jobs  # noqa: E402
from ledger.records import OutcomeRecord, PriceRecord, VerdictRecord  # noqa: E402
from ledger.store import Store  # noqa: E402

pytest_plugins = ("backends",)

CHEAP, DEAR = "cheap/model", "dear/model"
SPANISH = [j.job_id for j in make_jobs(2, "spanish", "negation_error")]
KOREAN = [j.job_id for j in make_jobs(2, "korean", "gerund_error")]
J_FALLBACK, J_FIRST_TRY = SPANISH
J_FAILED, J_ORPHAN = KOREAN

VIEWS = {"model_prices", "v_effective_prices", "v_attempt_facts", "v_latest_verdicts",
         "v_rejection_reasons", "v_accepted_dialogues", "v_job_state", "v_orphaned_attempts",
         "v_cost_by_model", "v_cost_by_run", "v_cost_by_l1", "v_cost_by_pattern",
         "v_waste_by_reason", "v_fallback_audit", "v_coverage", "v_runs", "v_quality"}


def verdict(passed: bool, *reasons: str, turns: int = 5, questions: int = 2,
            version: str = "f1", self_corrected: bool = True) -> VerdictRecord:
    return VerdictRecord(version, passed, tuple(reasons), turns, questions, self_corrected,
                         {"turns": turns}, '[{"role": "user", "content": "I no like it."}]')


def ok(cost: float, model: str, prompt: int, completion: int) -> OutcomeRecord:
    return OutcomeRecord("ok", cost, "response", http_status=200, model_served=model,
                         prompt_tokens=prompt, completion_tokens=completion, latency_ms=10.0,
                         finish_reason="stop", content="Student: I no like coffee.")


def attempt(store: Store, job_id: str, model: str, position: int, run: str = "r1",
            reserved: float = 0.01) -> int:
    start = store.begin_attempt(job_id, run, model, position, "p1", 200, reserved, None,
                                time.time(), 600)
    assert start.attempt_id is not None, start
    return start.attempt_id


def build_scenario(store: Store) -> dict[str, int]:
    """Four jobs in two cells, one run that stopped for credit, and what each attempt did:

    spanish #0: cheap 502 (free), cheap rejected twice over ($0.001), dear accepted ($0.004)
    spanish #1: cheap accepted at once ($0.0005)
    korean  #0: cheap rejected ($0.0007), then the job failed
    korean  #1: cheap request sent, no outcome: the run stopped, it may have been billed
    A second run is still going and has done nothing. The cheap model has a recorded price.
    """
    store.plan_jobs(make_jobs(2, "spanish", "negation_error") +
                    make_jobs(2, "korean", "gerund_error"))
    store.record_prices([PriceRecord(CHEAP, 1e-6, 2e-6, "config")])
    store.start_run("r1", "host", 1, "p1", "f1", {"models": [CHEAP, DEAR]})
    assert len(store.claim("r1", 4, time.time(), 600)) == 4
    ids = {}
    ids["fallback_502"] = a = attempt(store, J_FALLBACK, CHEAP, 0)
    store.finish_attempt(a, J_FALLBACK, "r1", OutcomeRecord(
        "server_error", 0.0, "none", http_status=502, message="bad gateway"))
    ids["fallback_rejected"] = a = attempt(store, J_FALLBACK, CHEAP, 0)
    store.finish_attempt(a, J_FALLBACK, "r1", ok(0.001, CHEAP, 100, 50),
                         verdict(False, "explicit_correction", "no_question", turns=4,
                                 questions=0, self_corrected=False))
    ids["fallback_accepted"] = a = attempt(store, J_FALLBACK, DEAR, 1)
    assert store.finish_attempt(a, J_FALLBACK, "r1", ok(0.004, DEAR, 100, 60),
                                verdict(True, turns=6, questions=3), accept=True)
    ids["first_try"] = a = attempt(store, J_FIRST_TRY, CHEAP, 0)
    assert store.finish_attempt(a, J_FIRST_TRY, "r1", ok(0.0005, CHEAP, 100, 40),
                                verdict(True, turns=4, questions=1), accept=True)
    ids["failed_rejected"] = a = attempt(store, J_FAILED, CHEAP, 0)
    store.finish_attempt(a, J_FAILED, "r1", ok(0.0007, CHEAP, 90, 30),
                         verdict(False, "no_question", turns=3, questions=0,
                                 self_corrected=False),
                         fail_reasons=["cheap/model: rejected 1x (no_question)"])
    ids["orphan"] = attempt(store, J_ORPHAN, CHEAP, 0, reserved=0.0123)
    store.stop_run("r1", "credit", 3, "key", "out of credit")
    store.start_run("r2", "host", 2, "p1", "f1", {})
    return ids


def rows(ledger, sql: str) -> list[tuple]:
    with ledger.engine.connect() as conn:
        return [tuple(float(v) if type(v).__name__ == "Decimal" else v for v in r)
                for r in conn.exec_driver_sql(sql)]


def approx_rows(expected: list[tuple]) -> list[tuple]:
    return [tuple(pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for v in row)
            for row in expected]


@pytest.fixture
def scenario(backend, ledger_on):  # type: ignore[no-untyped-def]
    store = Store(ledger_on)
    ids = build_scenario(store)
    store.close()
    return ids


def test_every_view_exists_and_answers_on_an_empty_ledger(backend, ledger_on):
    assert VIEWS <= backend.views()
    for view in sorted(VIEWS):
        got = rows(ledger_on, f"SELECT * FROM {view}")
        if view not in ("model_prices", "v_effective_prices"):
            assert got == [], view


def test_cost_by_model_counts_every_attempt_under_the_model_that_served_it(scenario, ledger_on):
    got = rows(ledger_on, "SELECT model, attempts, billed_attempts, prompt_tokens, "
                          "completion_tokens, cost_usd, accepted, acceptance_rate, "
                          "cost_per_accepted_usd FROM v_cost_by_model ORDER BY model")
    # cheap: the 502 and the orphan count as attempts, with no tokens and no cost.
    assert got == approx_rows([
        (CHEAP, 5, 3, 290, 120, 0.0022, 1, 0.2, 0.0022),
        (DEAR, 1, 1, 100, 60, 0.004, 1, 1.0, 0.004),
    ])
    total = rows(ledger_on, "SELECT spend_usd FROM ledger_totals")[0][0]
    assert sum(r[5] for r in got) == pytest.approx(total)


def test_cost_by_run_l1_and_pattern(scenario, ledger_on):
    assert rows(ledger_on, "SELECT run_id, attempts, billed_attempts, cost_usd, accepted, "
                           "cost_per_accepted_usd FROM v_cost_by_run") == approx_rows(
        [("r1", 6, 4, 0.0062, 2, 0.0031)])
    assert rows(ledger_on, "SELECT l1, jobs, attempts, accepted, cost_usd, "
                           "cost_per_accepted_usd FROM v_cost_by_l1 ORDER BY l1") == approx_rows(
        [("korean", 2, 2, 0, 0.0007, None), ("spanish", 2, 4, 2, 0.0055, 0.00275)])
    assert rows(ledger_on, "SELECT pattern, jobs, attempts, accepted, cost_usd "
                           "FROM v_cost_by_pattern ORDER BY pattern") == approx_rows(
        [("gerund_error", 2, 2, 0, 0.0007), ("negation_error", 2, 4, 2, 0.0055)])


def test_waste_counts_a_rejection_under_each_rule_it_failed(scenario, ledger_on):
    got = rows(ledger_on, "SELECT kind, reason, attempts, cost_usd FROM v_waste_by_reason "
                          "ORDER BY kind, reason")
    assert got == approx_rows([
        ("error", "server_error", 1, 0.0),
        ("rejected", "explicit_correction", 1, 0.001),
        ("rejected", "no_question", 2, 0.0017),
    ])


def test_a_newer_verdict_replaces_the_old_one_in_waste_and_reasons(scenario, ledger_on):
    store = Store(ledger_on)
    store.record_verdicts([(J_FAILED, scenario["failed_rejected"], verdict(True, version="f2"),
                            False)])
    store.close()
    assert rows(ledger_on, "SELECT reason, attempts FROM v_waste_by_reason "
                           "WHERE kind = 'rejected' ORDER BY reason") == [
        ("explicit_correction", 1), ("no_question", 1)]
    assert rows(ledger_on, "SELECT attempt_id, reason FROM v_rejection_reasons "
                           "ORDER BY reason") == [
        (scenario["fallback_rejected"], "explicit_correction"),
        (scenario["fallback_rejected"], "no_question")]
    assert rows(ledger_on, "SELECT model, filter_version, verdicts, passed FROM v_quality "
                           "ORDER BY model, filter_version") == [
        (CHEAP, "f1", 3, 1), (CHEAP, "f2", 1, 1), (DEAR, "f1", 1, 1)]


def test_fallback_audit_names_each_hop_and_the_extra_cost(scenario, ledger_on):
    got = rows(ledger_on, "SELECT job_id, l1, pattern, first_model, model_served, "
                          "chain_position, chain_depth, attempts, hop_causes, job_cost_usd, "
                          "first_model_price_source, extra_cost_usd FROM v_fallback_audit")
    # What the job cost ($0.005) minus the accepted answer's tokens at the cheap model's
    # recorded price: 100 x 1e-6 + 60 x 2e-6 = $0.00022.
    assert got == approx_rows([(
        J_FALLBACK, "spanish", "negation_error", CHEAP, DEAR, 1, 2, 3,
        f"{CHEAP}: server_error; {CHEAP}: rejected (explicit_correction, no_question)",
        0.005, "config", 0.005 - 0.00022)])


def test_fallback_audit_prices_the_first_model_from_the_bundled_table(backend, ledger_on):
    gemini = "google/gemini-2.0-flash-001"  # in ledger/data/prices.json: 1e-7 in, 4e-7 out
    store = Store(ledger_on)
    job = make_jobs(1, "arabic", "pronoun_copy")[0]
    store.plan_jobs([job])
    store.start_run("r", "h", 1, "p1", "f1", {})
    store.claim("r", 1, time.time(), 600)
    a = attempt(store, job.job_id, gemini, 0, run="r")
    store.finish_attempt(a, job.job_id, "r", OutcomeRecord("rate_limited", 0.0, "none",
                                                           http_status=429))
    b = attempt(store, job.job_id, DEAR, 1, run="r")
    store.finish_attempt(b, job.job_id, "r", ok(0.002, DEAR, 1000, 500), verdict(True),
                         accept=True)
    store.close()
    assert rows(ledger_on, "SELECT first_model, hop_causes, first_model_price_source, "
                           "extra_cost_usd FROM v_fallback_audit") == approx_rows(
        [(gemini, f"{gemini}: rate_limited", "bundled", 0.002 - (1000 * 1e-7 + 500 * 4e-7))])
    assert rows(ledger_on, "SELECT prompt_usd_per_token, completion_usd_per_token "
                           f"FROM model_prices WHERE model = '{gemini}'") == approx_rows(
        [(1e-7, 4e-7)])


def test_orphans_say_whether_their_run_has_stopped(scenario, ledger_on):
    assert rows(ledger_on, "SELECT attempt_id, job_id, l1, run_id, model_requested, "
                           "reserved_usd, run_stopped, run_stop_reason, note "
                           "FROM v_orphaned_attempts") == approx_rows([
        (scenario["orphan"], J_ORPHAN, "korean", "r1", CHEAP, 0.0123, 1, "credit",
         "may have been billed")])


def test_an_orphan_of_a_live_run_may_still_be_in_flight(backend, ledger_on):
    store = Store(ledger_on)
    job = make_jobs(1)[0]
    store.plan_jobs([job])
    store.start_run("live", "h", 1, "p1", "f1", {})
    store.claim("live", 1, time.time(), 600)
    attempt(store, job.job_id, CHEAP, 0, run="live")
    store.close()
    assert rows(ledger_on, "SELECT run_stopped, note FROM v_orphaned_attempts") == [
        (0, "in flight, or its run died unrecorded")]


def test_coverage_runs_and_job_state(scenario, ledger_on):
    assert rows(ledger_on, "SELECT l1, pattern, planned, accepted, failed, remaining, "
                           "accepted_pct FROM v_coverage ORDER BY l1") == approx_rows([
        ("korean", "gerund_error", 2, 0, 1, 2, 0.0),
        ("spanish", "negation_error", 2, 2, 0, 0, 100.0)])
    assert rows(ledger_on, "SELECT run_id, reason, exit_code, attempts, accepted, spend_usd "
                           "FROM v_runs ORDER BY run_id") == approx_rows([
        ("r1", "credit", 3, 6, 2, 0.0062), ("r2", None, None, 0, 0, 0.0)])
    assert rows(ledger_on, "SELECT job_id, state, attempts, spend_usd, accepted_model "
                           "FROM v_job_state ORDER BY job_id") == approx_rows(sorted([
        (J_FALLBACK, "accepted", 3, 0.005, DEAR), (J_FIRST_TRY, "accepted", 1, 0.0005, CHEAP),
        (J_FAILED, "failed", 1, 0.0007, None), (J_ORPHAN, "open", 1, 0.0, None)]))


def test_accepted_dialogues_carry_the_accepted_attempt_and_the_job_spend(scenario, ledger_on):
    got = rows(ledger_on, "SELECT job_id, l1, attempt_id, attempt_no, model_requested, "
                          "model_served, chain_position, filter_version, cost_usd, "
                          "job_spend_usd, turns, messages_json FROM v_accepted_dialogues "
                          "ORDER BY accepted_seq")
    message = '[{"role": "user", "content": "I no like it."}]'
    assert got == approx_rows([
        (J_FALLBACK, "spanish", scenario["fallback_accepted"], 3, DEAR, DEAR, 1, "f1", 0.004,
         0.005, 6, message),
        (J_FIRST_TRY, "spanish", scenario["first_try"], 1, CHEAP, CHEAP, 0, "f1", 0.0005,
         0.0005, 4, message)])


def test_quality_by_model_and_filter_version(scenario, ledger_on):
    assert rows(ledger_on, "SELECT model, filter_version, verdicts, passed, pass_rate, "
                           "avg_turns, avg_tutor_questions, self_correction_rate "
                           "FROM v_quality ORDER BY model") == approx_rows([
        (CHEAP, "f1", 3, 1, 1 / 3, 11 / 3, 1 / 3, 1 / 3),
        (DEAR, "f1", 1, 1, 1.0, 6.0, 3.0, 1.0)])


def test_a_later_recorded_price_wins_over_an_earlier_one_and_the_bundled_table(backend,
                                                                              ledger_on):
    gemini = "google/gemini-2.0-flash-001"
    store = Store(ledger_on)
    store.record_prices([PriceRecord(gemini, 5e-7, 6e-7, "models_api")])
    store.record_prices([PriceRecord(gemini, 7e-7, 8e-7, "models_api")])
    store.close()
    got = rows(ledger_on, "SELECT prompt_usd_per_token, completion_usd_per_token, source "
                          f"FROM v_effective_prices WHERE model = '{gemini}'")
    assert got == approx_rows([(7e-7, 8e-7, "models_api")])


def test_the_sqlite_shell_reads_the_views(tmp_path):
    from ledger.db import open_ledger

    path = tmp_path / "ledger.db"
    led = open_ledger(str(path))
    store = Store(led)
    build_scenario(store)
    store.close()
    led.dispose()
    con = sqlite3.connect(path)  # a plain connection, as `sqlite3 ledger.db` opens it
    try:
        assert con.execute("SELECT COUNT(*) FROM v_fallback_audit").fetchone() == (1,)
        assert con.execute("SELECT reason FROM v_waste_by_reason WHERE kind = 'error'"
                           ).fetchall() == [("server_error",)]
    finally:
        con.close()
