"""`python cli.py run` as a user runs it: exit codes, messages, options, and a key kept secret.

Every test runs the real CLI in a subprocess against the simulator on loopback.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import make_jobs, run_cli
from ledger.db import open_ledger
from ledger.simulator import SimConfig, Simulator

KEY = "sk-or-v1-cli-secret-5f3a9c0e7d21b4"
A, B = "google/gemini-2.0-flash-001", "anthropic/claude-3.5-haiku"


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


@pytest.fixture
def start_sim():  # type: ignore[no-untyped-def]
    sims: list[Simulator] = []

    def start(**options: Any) -> Simulator:
        sim = Simulator(SimConfig.from_kwargs(**{"latency_ms": 5, **options}))
        sim.start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


def env(sim: Simulator, ledger_path: Path | None = None, key: str | None = KEY) -> dict[str, str]:
    out = {"OPENROUTER_BASE_URL": sim.base_url}
    if ledger_path is not None:
        out["LEDGER_DB"] = str(ledger_path)
    if key is not None:
        out["OPENROUTER_API_KEY"] = key
    return out


def cli_run(sim: Simulator, ledger_path: Path, *args: str, key: str | None = KEY):  # type: ignore[no-untyped-def]
    return run_cli("run", "--quiet", *args, env=env(sim, ledger_path, key))


def rows(ledger, sql: str) -> list[Any]:  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.execute(text(sql)).all()


def one(ledger, sql: str) -> Any:  # type: ignore[no-untyped-def]
    return rows(ledger, sql)[0][0]


def ledger_bytes(ledger_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in ledger_path.parent.glob(ledger_path.name + "*"))


def test_run_to_the_end_exits_0_and_never_stores_the_key(ledger, store, ledger_path,
                                                          start_sim) -> None:
    store.plan_jobs(make_jobs(6))
    sim = start_sim(api_key=KEY, p_500=0.2, p_correction=0.2, seed=4)
    # Not --quiet: the progress bar on stderr must not leak the key either.
    done = run_cli("run", "--db", str(ledger_path), "--concurrency", "2",
                   env=env(sim, key=KEY))
    assert done.returncode == 0, done.stderr
    assert "stopped: done (exit 0)" in done.stdout
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 6
    # A wrong key is echoed nowhere either.
    wrong = "sk-or-v1-wrong-key-e4b7a1c9"
    refused = cli_run(sim, ledger_path, key=wrong)
    assert refused.returncode == 5
    for out in (done.stdout, done.stderr, refused.stdout, refused.stderr):
        assert KEY not in out and wrong not in out
    data = ledger_bytes(ledger_path)
    assert KEY.encode() not in data and wrong.encode() not in data
    assert sim.stats()["requests"] >= 6


def test_a_mistyped_budget_option_spends_nothing(ledger, store, ledger_path, start_sim) -> None:
    """`--budget` is not `--budget-usd`: the run must not start without the budget meant."""
    store.plan_jobs(make_jobs(4))
    sim = start_sim(api_key=KEY)
    done = cli_run(sim, ledger_path, "--budget", "0.0001")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "run has no option --budget" in done.stderr and "--budget-usd" in done.stderr
    assert sim.stats()["requests"] == 0
    assert one(ledger, "SELECT COUNT(*) FROM attempts") == 0
    assert one(ledger, "SELECT COUNT(*) FROM runs") == 0


@pytest.mark.parametrize("args, with_key, says", [
    (("--concurrency", "0"), True, "--concurrency"),
    ((), False, "OPENROUTER_API_KEY"),
])
def test_bad_input_exits_2(ledger, store, ledger_path, start_sim, args: tuple[str, ...],
                           with_key: bool, says: str) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    done = cli_run(sim, ledger_path, *args, key=KEY if with_key else None)
    assert done.returncode == 2
    assert says in done.stderr
    assert sim.stats()["requests"] == 0


def test_402_exits_3_says_how_to_resume_and_resume_finishes(ledger, store, ledger_path,
                                                            start_sim) -> None:
    store.plan_jobs(make_jobs(4))
    sim = start_sim()
    sim.script(["ok", "402_credits"])
    halted = cli_run(sim, ledger_path, "--concurrency", "1")
    assert halted.returncode == 3
    assert "openrouter_credits" in halted.stderr and "python cli.py run" in halted.stderr
    assert sim.stats()["requests"] == 2
    assert rows(ledger, "SELECT reason, exit_code, limit_source FROM run_stops") == [
        ("credit", 3, "openrouter_credits")]
    resumed = cli_run(sim, ledger_path, "--concurrency", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 4
    assert sim.stats()["requests"] == 2 + 3


def test_preflight_refuses_when_the_key_cannot_pay_for_one_attempt(ledger, store, ledger_path,
                                                                    start_sim) -> None:
    store.plan_jobs(make_jobs(2))
    sim = start_sim(credit_limit_usd=0.00001)
    # --base-url instead of OPENROUTER_BASE_URL, --db instead of LEDGER_DB.
    done = run_cli("run", "--quiet", "--base-url", sim.base_url, "--db", str(ledger_path),
                   env={"OPENROUTER_API_KEY": KEY})
    assert done.returncode == 3
    assert "top up" in done.stderr
    assert sim.stats()["requests"] == 0
    assert one(ledger, "SELECT COUNT(*) FROM attempts") == 0


def test_a_401_on_chat_exits_5(ledger, store, ledger_path, start_sim) -> None:
    store.plan_jobs(make_jobs(3))
    sim = start_sim()
    sim.script(["401"])
    done = cli_run(sim, ledger_path, "--concurrency", "1")
    assert done.returncode == 5
    assert "OPENROUTER_API_KEY" in done.stderr
    assert sim.stats()["requests"] == 1
    assert rows(ledger, "SELECT reason, exit_code FROM run_stops") == [("key", 5)]


def test_a_base_url_without_a_chat_api_stops_the_run_and_fails_no_job(
        ledger, store, ledger_path, start_sim) -> None:
    """A wrong path answers 404 to every request; that says nothing about any job or model."""
    store.plan_jobs(make_jobs(10))
    sim = start_sim()
    wrong = sim.base_url.replace("/api/v1", "/wrong/path")
    done = run_cli("run", "--quiet", "--concurrency", "2",
                   env={**env(sim, ledger_path), "OPENROUTER_BASE_URL": wrong})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "every model of the chain answered HTTP 404 at" in done.stderr
    assert "/wrong/path/chat/completions" in done.stderr
    assert "--base-url" in done.stderr and "the jobs stay open" in done.stderr
    assert sim.stats()["requests"] <= 2 * 3  # two workers, each one job's chain of 3 models
    assert rows(ledger, "SELECT reason, exit_code FROM run_stops") == [("endpoint", 2)]
    assert one(ledger, "SELECT COUNT(*) FROM job_state WHERE state = 'open'") == 10
    right = cli_run(sim, ledger_path)
    assert right.returncode == 0, right.stderr
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 10


def test_a_limit_that_takes_the_last_jobs_says_none_is_left(ledger, store, ledger_path,
                                                            start_sim) -> None:
    store.plan_jobs(make_jobs(2))
    sim = start_sim()
    done = cli_run(sim, ledger_path, "--limit", "2")
    assert done.returncode == 0, done.stderr
    assert "no open job left" in done.stdout + done.stderr
    assert "--limit 2 reached" not in done.stdout + done.stderr


def test_one_model_without_endpoints_passes_its_job_to_the_next_model(
        ledger, store, ledger_path, start_sim) -> None:
    """OpenRouter answers 404 for a model no provider serves; the chain goes on."""
    store.plan_jobs(make_jobs(3))
    sim = start_sim()
    sim.script(["404_model"])
    done = cli_run(sim, ledger_path, "--concurrency", "1")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 3
    assert rows(ledger, "SELECT a.chain_position, o.error_class FROM attempts a JOIN "
                        "attempt_outcomes o USING (attempt_id) ORDER BY a.attempt_id")[:2] == [
        (0, "not_found"), (1, "ok")]


def test_budget_holds_across_restarts(ledger, store, ledger_path, start_sim) -> None:
    store.plan_jobs(make_jobs(12))
    sim = start_sim(latency_ms=20)
    budget = "0.0004"
    first = cli_run(sim, ledger_path, "--budget-usd", budget, "--concurrency", "2")
    assert first.returncode == 4, first.stderr
    assert "budget" in first.stderr
    spent = one(ledger, "SELECT spend_usd FROM ledger_totals")
    accepted = one(ledger, "SELECT COUNT(*) FROM acceptances")
    assert 0 < spent <= float(budget) and 0 < accepted < 12
    assert spent == pytest.approx(sim.stats()["billed_usd"])
    requests = sim.stats()["requests"]

    again = cli_run(sim, ledger_path, "--budget-usd", budget, "--concurrency", "2")
    assert again.returncode == 4
    assert sim.stats()["requests"] == requests  # not one request more
    assert one(ledger, "SELECT spend_usd FROM ledger_totals") == spent

    raised = cli_run(sim, ledger_path, "--budget-usd", "1", "--concurrency", "2")
    assert raised.returncode == 0, raised.stderr
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 12
    assert [r[0] for r in rows(ledger, "SELECT reason FROM run_stops ORDER BY seq")] == [
        "budget", "budget", "done"]


def test_config_file_sets_defaults_and_options_win(ledger, store, ledger_path, tmp_path,
                                                   start_sim) -> None:
    store.plan_jobs(make_jobs(4))
    sim = start_sim()
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"models": [B], "concurrency": 2, "tries_per_model": 1}))
    limited = cli_run(sim, ledger_path, "--config", str(config), "--limit", "2")
    assert limited.returncode == 0, limited.stderr
    # Two jobs are still open: the stop says the limit ended the run, not that nothing is left.
    assert "--limit 2 reached" in limited.stdout + limited.stderr
    assert "no open job left" not in limited.stdout + limited.stderr
    assert rows(ledger, "SELECT DISTINCT model_requested FROM attempts") == [(B,)]
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 2
    recorded = json.loads(one(ledger, "SELECT config_json FROM runs"))
    assert recorded["concurrency"] == 2 and recorded["models"] == [B]

    rest = cli_run(sim, ledger_path, "--config", str(config), "--models", A)
    assert rest.returncode == 0, rest.stderr
    assert one(ledger, "SELECT COUNT(*) FROM acceptances") == 4
    assert rows(ledger, "SELECT model_requested, COUNT(*) FROM attempts "
                        "GROUP BY model_requested ORDER BY 1") == [(B, 2), (A, 2)]


def test_rpm_spaces_requests_out(ledger, store, ledger_path, start_sim) -> None:
    store.plan_jobs(make_jobs(4))
    sim = start_sim()
    done = cli_run(sim, ledger_path, "--rpm", "300", "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    started = sorted(datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp()
                     for r in rows(ledger, "SELECT started_at_utc FROM attempts"))
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert len(gaps) == 3 and min(gaps) >= 0.15  # 300 rpm is one request every 0.2 s


def test_retry_failed_from_the_command_line(ledger, store, ledger_path, start_sim) -> None:
    store.plan_jobs(make_jobs(1))
    sim = start_sim()
    sim.script(["400", "400", "400"])
    first = cli_run(sim, ledger_path)
    assert first.returncode == 0 and "failed jobs" in first.stdout
    assert one(ledger, "SELECT state FROM job_state") == "failed"
    retried = cli_run(sim, ledger_path, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert one(ledger, "SELECT state FROM job_state") == "accepted"
    assert sim.stats()["requests"] == 4
