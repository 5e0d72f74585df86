"""`report` and `sql`: named reports over the views, their formats and filters, and ad-hoc SQL
that cannot change the ledger."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess

import pytest
from alembic import command

from conftest import run_cli
from ledger.db import _alembic_config, head_revision, make_engine, resolve_url
from ledger.errors import UsageError
from ledger.reports import REPORT_NAMES, Filters, parse_since, run_report
from test_views import CHEAP, DEAR, build_scenario


@pytest.fixture
def filled(store, ledger_path):  # type: ignore[no-untyped-def]
    build_scenario(store)
    store.close()
    return str(ledger_path)


@pytest.fixture
def cli(capsys):  # type: ignore[no-untyped-def]
    """`python cli.py ARGS` in this process (the subprocess start-up dominates otherwise);
    the tests that need a real process use run_cli."""
    import cli as entry

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        code = entry.main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


def test_costs_as_json_is_an_array_of_objects_with_exact_numbers(filled):
    result = run_cli("report", "costs", "--format", "json", "--db", filled, timeout=60)
    assert result.returncode == 0, result.stderr
    by_model = {r["model"]: r for r in json.loads(result.stdout)}
    assert by_model[CHEAP]["cost_usd"] == pytest.approx(0.0022)
    assert by_model[CHEAP]["attempts"] == 5 and by_model[CHEAP]["accepted"] == 1
    assert by_model[DEAR]["cost_per_accepted_usd"] == pytest.approx(0.004)


def test_csv_has_a_header_and_one_line_per_row(cli, filled):
    result = cli("report", "waste", "--format", "csv", "--db", filled)
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {(r["kind"], r["reason"], r["attempts"]) for r in table} == {
        ("rejected", "no_question", "2"), ("rejected", "explicit_correction", "1"),
        ("error", "server_error", "1")}


def test_a_table_format_shows_the_title_the_numbers_and_the_note(cli, filled):
    result = cli("report", "fallbacks", "--format", "github", "--db", filled)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("jobs accepted down the model chain (v_fallback_audit)")
    assert "| first_model" in out and f"| {CHEAP}" in out
    assert "0.004780" in out  # the extra cost: $0.005 - (100 x 1e-6 + 60 x 2e-6)
    assert "v_fallback_audit ORDER BY extra_cost_usd DESC" in out


def test_every_named_report_runs_in_every_plain_format(cli, filled):
    for name in REPORT_NAMES:
        for fmt in ("simple", "json", "csv"):
            result = cli("report", name, "--format", fmt, "--db", filled)
            assert result.returncode == 0, (name, fmt, result.stderr)
            assert result.stdout.strip(), (name, fmt)


def test_no_name_lists_the_reports(cli, filled):
    result = cli("report", "--db", filled)
    assert result.returncode == 0
    assert all(name in result.stdout for name in REPORT_NAMES)


def test_a_filter_on_a_view_column_narrows_the_rows(cli, filled):
    result = cli("report", "coverage", "--l1", "korean", "--format", "json", "--db", filled)
    assert [(r["l1"], r["accepted"], r["failed"]) for r in json.loads(result.stdout)] == [
        ("korean", 0, 1)]


def test_a_filter_the_view_has_summed_away_narrows_the_attempts_first(cli, filled):
    result = cli("report", "costs", "--l1", "korean", "--format", "json", "--db", filled)
    assert result.returncode == 0, result.stderr
    # korean: the rejected attempt ($0.0007) and the orphan, both on the cheap model
    assert [(r["model"], r["attempts"], r["cost_usd"]) for r in json.loads(result.stdout)] == [
        (CHEAP, 2, pytest.approx(0.0007))]
    two = cli("report", "waste", "--l1", "spanish,korean", "--model", CHEAP, "--format", "json",
              "--db", filled)
    assert {(r["kind"], r["reason"], r["attempts"]) for r in json.loads(two.stdout)} == {
        ("rejected", "no_question", 2), ("rejected", "explicit_correction", 1),
        ("error", "server_error", 1)}


@pytest.mark.parametrize("name", ["costs", "quality", "waste"])
def test_summing_the_attempts_gives_the_views_own_numbers(ledger, filled, name):
    on_view = run_report(ledger, name)
    # --since at the epoch keeps every attempt but cannot be applied to the summed view.
    on_facts = run_report(ledger, name, Filters(since=parse_since("1970-01-01")))
    assert on_facts.columns == on_view.columns
    assert [tuple(pytest.approx(v) if isinstance(v, float) else v for v in row)
            for row in on_facts.rows] == list(on_view.rows)


def test_since_keeps_only_later_attempts(cli, filled):
    result = cli("report", "costs", "--since", "2999-01-01", "--format", "json", "--db", filled)
    assert result.returncode == 0 and json.loads(result.stdout) == []
    runs = cli("report", "runs", "--since", "2000-01-01T00:00:00+02:00", "--format", "json",
               "--db", filled)
    assert {r["run_id"] for r in json.loads(runs.stdout)} == {"r1", "r2"}


def test_filter_values_are_bound_not_spliced_into_the_sql(cli, filled, ledger_path):
    """Spliced in, OR 1=1 would match every job and the report would run."""
    hostile = "x') or 1=1 --"
    result = cli("report", "coverage", "--pattern", hostile, "--format", "json", "--db", filled)
    assert result.returncode == 2
    assert f"no job in the ledger has --pattern {hostile!r}" in result.stderr


def test_report_sql_binds_filter_values(ledger, store):
    """Below the CLI's check: the report's own query binds a hostile value, matching nothing."""
    hostile = "x') or 1=1 --"
    build_scenario(store)
    assert run_report(ledger, "coverage", Filters(pattern=(hostile,))).rows == ()
    assert run_report(ledger, "costs", Filters(l1=(hostile,))).rows == ()
    assert run_report(ledger, "coverage").rows  # the same report, unfiltered, has rows


def test_a_filter_value_no_job_has_is_named_with_the_values_there_are(cli, filled):
    typo = cli("report", "costs-by-l1", "--l1", "klingon", "--db", filled)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "no job in the ledger has --l1 'klingon'; it has: " in typo.stderr
    model = cli("report", "costs", "--model", "no/such-model", "--db", filled)
    assert model.returncode == 2 and "no attempt in the ledger has --model" in model.stderr
    # Ids are stored lower case: "Spanish" is spanish, as export reads it.
    upper = cli("report", "costs-by-l1", "--l1", "Spanish", "--format", "json", "--db", filled)
    lower = cli("report", "costs-by-l1", "--l1", "spanish", "--format", "json", "--db", filled)
    assert upper.returncode == 0 and upper.stdout == lower.stdout
    assert json.loads(lower.stdout)


def test_since_must_be_an_iso_date():
    assert parse_since("2026-11-25") == "2026-11-25T00:00:00.000000Z"
    assert parse_since("2026-11-25T10:00:00+02:00") == "2026-11-25T08:00:00.000000Z"
    with pytest.raises(UsageError, match="ISO date"):
        parse_since("last tuesday")


@pytest.mark.parametrize("args, message", [
    (["report", "nonsense"], "unknown report 'nonsense'; reports: costs,"),
    (["report", "coverage", "--model", "m"], "report coverage cannot be narrowed by --model"),
    (["report", "costs", "--since", "soon"], "--since takes an ISO date"),
    (["report", "costs", "--format", "yaml"], "--format must be csv, json or a tabulate"),
])
def test_bad_input_is_one_line_and_exit_2(cli, filled, args, message):
    result = cli(*args, "--db", filled)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_reports_do_not_wait_for_a_writer(filled):
    writer = sqlite3.connect(filled, isolation_level=None, timeout=1)
    writer.execute("BEGIN IMMEDIATE")  # a run in the middle of a write transaction
    try:
        result = run_cli("report", "costs", "--db", filled, timeout=20)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.returncode == 0, result.stderr
    assert CHEAP in result.stdout


def test_a_ledger_from_before_the_views_is_upgraded_first(cli, tmp_path):
    db = tmp_path / "old.db"
    engine = make_engine(resolve_url(str(db)))
    with engine.connect() as conn, conn.begin():
        command.upgrade(_alembic_config(conn), "0001")
    engine.dispose()
    result = cli("report", "coverage", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert f"upgraded schema 0001 -> {head_revision()}" in result.stderr


def test_sql_prints_rows_from_a_view(cli, filled):
    result = cli("sql", "SELECT model, accepted FROM v_cost_by_model ORDER BY model",
                 "--format", "json", "--db", filled)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"model": CHEAP, "accepted": 1},
                                         {"model": DEAR, "accepted": 1}]


def test_sql_says_when_it_stops_at_the_limit(cli, filled):
    result = cli("sql", "SELECT job_id FROM jobs ORDER BY job_id", "--limit", "3",
                 "--format", "csv", "--db", filled)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 + 3
    assert "showing the first 3 rows" in result.stderr
    whole = cli("sql", "SELECT job_id FROM jobs", "--db", filled)
    assert "showing the first" not in whole.stderr


@pytest.mark.parametrize("statement", [
    "DELETE FROM jobs",
    "UPDATE job_state SET state = 'accepted'",
    "INSERT INTO open_attempts VALUES (99, 'j', 'r', 0.0)",
    "DROP VIEW v_runs",
    "ATTACH DATABASE 'other.db' AS other",
])
def test_sql_refuses_to_write_in_one_line(cli, filled, statement, tmp_path):
    result = cli("sql", statement.replace("'other.db'", f"'{tmp_path / 'other.db'}'"),
                 "--db", filled)
    assert result.returncode == 2
    assert result.stderr.startswith("error: sql is read-only")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "other.db").exists()
    con = sqlite3.connect(filled)
    try:
        assert con.execute("SELECT COUNT(*) FROM jobs").fetchone() == (4,)
        assert con.execute("SELECT COUNT(*) FROM job_state WHERE state = 'accepted'"
                           ).fetchone() == (2,)
        assert con.execute("SELECT COUNT(*) FROM open_attempts").fetchone() == (1,)
    finally:
        con.close()


def test_a_write_refused_in_a_real_process_is_one_line_and_exit_2(filled):
    result = run_cli("sql", "DELETE FROM jobs", "--db", filled, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: sql is read-only")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_unknown_report_in_a_real_process_is_one_line_and_exit_2(filled):
    result = run_cli("report", "nonsense", "--db", filled, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown report 'nonsense'; reports: " + ", ".join(REPORT_NAMES))


def test_sql_reports_a_syntax_error_in_one_line(cli, filled):
    result = cli("sql", "SELEKT 1", "--db", filled)
    assert result.returncode == 2
    assert result.stderr.startswith("error: sql failed: near \"SELEKT\"")


def test_the_runs_note_on_empty_stop_reasons_shows_only_when_a_run_has_none(ledger, store):
    store.start_run("run-a", "host", 1, "p1", "f1", {})
    going = run_report(ledger, "runs")
    assert going.rows[0][3] is None and "no stop reason" in going.note
    store.stop_run("run-a", "done", 0, None, "no open job left")
    assert run_report(ledger, "runs").note == ""
