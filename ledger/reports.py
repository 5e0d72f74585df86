"""Named reports: read-only queries over the audit views (migration 0002), as rows.

A report reads its view. Filters (--l1, --pattern, --model, --since) are bound parameters on
fixed column names: a filter naming a column the view has narrows the view's rows; a filter the
view cannot apply (the view is already summed over L1s, say) switches the report to the same
sums taken over `v_attempt_facts`, one row per attempt, narrowed first.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, text
from tabulate import tabulate, tabulate_formats

from .db import Ledger
from .errors import UsageError

FILTER_OPTIONS = ("l1", "pattern", "model", "since")


@dataclass(frozen=True)
class Filters:
    """What to narrow a report to. `since` is UTC text in the ledger's own timestamp format,
    so it compares with the *_at_utc columns as text."""

    l1: tuple[str, ...] = ()
    pattern: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    since: str | None = None

    def given(self) -> tuple[str, ...]:
        return tuple(name for name in FILTER_OPTIONS if getattr(self, name))


@dataclass(frozen=True)
class Rows:
    """A report's result: column names and plain Python values (no driver types)."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass(frozen=True)
class ReportSpec:
    """One report. `view_filters` maps a filter to a column of `view_sql`'s rows;
    `facts_sql`, if any, is the same report summed over v_attempt_facts AS f, with `{where}`
    where the filter conditions go, and `facts_filters` maps filters to its columns."""

    name: str
    title: str
    view_sql: str
    order_by: str
    view_filters: Mapping[str, str] = field(default_factory=dict)
    facts_sql: str | None = None
    facts_filters: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    # The note explains empty cells of this column: shown only when a row has one.
    note_if_null: str | None = None

    @property
    def filters(self) -> tuple[str, ...]:
        return tuple(f for f in FILTER_OPTIONS if f in self.view_filters
                     or f in self.facts_filters)


def parse_since(value: Any) -> str | None:
    """--since as an ISO date or date-time (no zone means UTC) -> the ledger's UTC text."""
    if value is None or value == "":
        return None
    raw = str(value).strip()
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"--since takes an ISO date or date-time, e.g. 2026-11-25 or "
                         f"2026-11-25T14:00:00Z; got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_FACTS = {"l1": "f.l1", "pattern": "f.pattern", "model": "f.model",
          "since": "f.started_at_utc"}

_COST_SUMS = """COUNT(*) AS attempts, SUM(f.billed) AS billed_attempts,
       COALESCE(SUM(f.prompt_tokens), 0) AS prompt_tokens,
       COALESCE(SUM(f.completion_tokens), 0) AS completion_tokens,
       SUM(f.cost_usd) AS cost_usd, SUM(f.accepted) AS accepted,
       CAST(SUM(f.accepted) AS DOUBLE PRECISION) / COUNT(*) AS acceptance_rate,
       SUM(f.cost_usd) / NULLIF(SUM(f.accepted), 0) AS cost_per_accepted_usd"""
_COST_COLUMNS = ("attempts, billed_attempts, prompt_tokens, completion_tokens, cost_usd, "
                 "accepted, acceptance_rate, cost_per_accepted_usd")

REPORTS: tuple[ReportSpec, ...] = (
    ReportSpec(
        "costs", "cost by model (v_cost_by_model)",
        f"SELECT model, {_COST_COLUMNS} FROM v_cost_by_model", "cost_usd DESC, model",
        view_filters={"model": "model"},
        facts_sql=f"SELECT f.model AS model, {_COST_SUMS} FROM v_attempt_facts f {{where}} "
                  "GROUP BY f.model",
        facts_filters=_FACTS),
    ReportSpec(
        "costs-by-l1", "cost by learner L1 (v_cost_by_l1)",
        "SELECT l1, jobs, attempts, accepted, cost_usd, cost_per_accepted_usd FROM v_cost_by_l1",
        "l1", view_filters={"l1": "l1"}),
    ReportSpec(
        "costs-by-pattern", "cost by error pattern (v_cost_by_pattern)",
        "SELECT pattern, jobs, attempts, accepted, cost_usd, cost_per_accepted_usd "
        "FROM v_cost_by_pattern", "pattern", view_filters={"pattern": "pattern"}),
    ReportSpec(
        "costs-by-run", "cost by run (v_cost_by_run)",
        f"SELECT run_id, {_COST_COLUMNS} FROM v_cost_by_run", "run_id"),
    ReportSpec(
        "fallbacks", "jobs accepted down the model chain (v_fallback_audit)",
        "SELECT first_model, model_served, COUNT(*) AS jobs, "
        "CAST(AVG(chain_depth) AS DOUBLE PRECISION) AS avg_chain_depth, "
        "SUM(job_cost_usd) AS job_cost_usd, SUM(extra_cost_usd) AS extra_cost_usd "
        "FROM v_fallback_audit {where} GROUP BY first_model, model_served",
        "extra_cost_usd DESC, first_model, model_served",
        view_filters={"l1": "l1", "pattern": "pattern", "model": "model_served",
                      "since": "accepted_at_utc"},
        note="extra cost: what each job cost minus what its chain's first model would have "
             "charged for the accepted answer's tokens. Per job: sql \"SELECT * FROM "
             "v_fallback_audit ORDER BY extra_cost_usd DESC\""),
    ReportSpec(
        "quality", "verdicts by model and filter version (v_quality)",
        "SELECT model, filter_version, verdicts, passed, pass_rate, avg_turns, "
        "avg_tutor_questions, self_correction_rate FROM v_quality", "model, filter_version",
        view_filters={"model": "model"},
        facts_sql="SELECT f.model AS model, v.filter_version AS filter_version, "
                  "COUNT(*) AS verdicts, SUM(v.passed) AS passed, "
                  "CAST(SUM(v.passed) AS DOUBLE PRECISION) / COUNT(*) AS pass_rate, "
                  "CAST(AVG(v.turns) AS DOUBLE PRECISION) AS avg_turns, "
                  "CAST(AVG(v.tutor_questions) AS DOUBLE PRECISION) AS avg_tutor_questions, "
                  "CAST(SUM(v.self_corrected) AS DOUBLE PRECISION) / COUNT(*) "
                  "AS self_correction_rate "
                  "FROM verdicts v JOIN v_attempt_facts f ON f.attempt_id = v.attempt_id "
                  "{where} GROUP BY f.model, v.filter_version",
        facts_filters=_FACTS),
    ReportSpec(
        "coverage", "accepted against planned, L1 x pattern (v_coverage)",
        "SELECT l1, pattern, planned, accepted, failed, remaining, accepted_pct "
        "FROM v_coverage", "l1, pattern", view_filters={"l1": "l1", "pattern": "pattern"}),
    ReportSpec(
        "runs", "runs: start, stop, reason, spend (v_runs)",
        "SELECT run_id, started_at_utc, stopped_at_utc, reason, exit_code, attempts, accepted, "
        "spend_usd FROM v_runs", "started_at_utc, run_id",
        view_filters={"since": "started_at_utc"},
        note="no stop reason: the run is still going, or died without a word (the next run "
             "records it as 'died')", note_if_null="reason"),
    ReportSpec(
        "orphans", "attempts with no outcome (v_orphaned_attempts)",
        "SELECT attempt_id, job_id, l1, pattern, run_id, model_requested, reserved_usd, "
        "started_at_utc, run_stopped, note FROM v_orphaned_attempts", "attempt_id",
        view_filters={"l1": "l1", "pattern": "pattern", "model": "model_requested",
                      "since": "started_at_utc"},
        note="an orphan whose run has stopped may have been billed: check the provider's "
             "activity page for its generation"),
    ReportSpec(
        "waste", "spend on answers that were not accepted (v_waste_by_reason)",
        "SELECT kind, reason, attempts, cost_usd FROM v_waste_by_reason",
        "kind DESC, cost_usd DESC, reason",
        facts_sql="SELECT 'rejected' AS kind, r.reason AS reason, COUNT(*) AS attempts, "
                  "SUM(f.cost_usd) AS cost_usd FROM v_rejection_reasons r "
                  "JOIN v_attempt_facts f ON f.attempt_id = r.attempt_id "
                  "{where} AND f.accepted = 0 GROUP BY r.reason "
                  "UNION ALL "
                  "SELECT 'error' AS kind, f.error_class AS reason, COUNT(*) AS attempts, "
                  "SUM(f.cost_usd) AS cost_usd FROM v_attempt_facts f "
                  "{where} AND f.has_outcome = 1 AND NOT EXISTS "
                  "(SELECT 1 FROM verdicts v WHERE v.attempt_id = f.attempt_id) "
                  "GROUP BY f.error_class",
        facts_filters=_FACTS,
        note="a rejected answer counts under every rule it failed, so the 'rejected' rows "
             "add up to more than was spent on rejections"),
)

REPORT_NAMES: tuple[str, ...] = tuple(r.name for r in REPORTS)


def report_spec(name: str) -> ReportSpec:
    for spec in REPORTS:
        if spec.name == name:
            return spec
    raise UsageError(f"unknown report {name!r}; reports: {', '.join(REPORT_NAMES)}")


def checked_spec(name: str, filters: Filters) -> ReportSpec:
    """The report NAME, refusing filters it cannot apply."""
    spec = report_spec(name)
    unusable = [f for f in filters.given() if f not in spec.filters]
    if unusable:
        usable = ", ".join(f"--{f}" for f in spec.filters) or "no filter"
        raise UsageError(f"report {name} cannot be narrowed by "
                         f"{', '.join('--' + f for f in unusable)}; it takes {usable}")
    return spec


def run_report(ledger: Ledger, name: str, filters: Filters = Filters()) -> Rows:
    spec = checked_spec(name, filters)
    on_view = all(f in spec.view_filters for f in filters.given())
    if on_view or spec.facts_sql is None:
        sql, params = _filtered(spec.view_sql, spec.view_filters, filters, wrap=True)
    else:
        sql, params = _filtered(spec.facts_sql, spec.facts_filters, filters, wrap=False)
        sql = f"SELECT * FROM ({sql}) facts"
    stmt = _bind(f"{sql} ORDER BY {spec.order_by}", params)
    with reading_connection(ledger) as conn:
        result = conn.execute(stmt, params)
        columns = tuple(result.keys())
        rows = tuple(tuple(plain(v) for v in row) for row in result)
    note = spec.note
    if spec.note_if_null is not None:
        at = columns.index(spec.note_if_null)
        note = note if any(row[at] is None for row in rows) else ""
    return Rows(name=spec.name, title=spec.title, columns=columns, rows=rows, note=note)


@contextmanager
def reading_connection(ledger: Ledger) -> Iterator[Connection]:
    """A connection for summing over the whole ledger. On SQLite, sorts for GROUP BY stay in
    memory: a million-row sort spilled to a temporary file costs a report a tenth of its
    time. Set before the first statement, outside any transaction, as SQLite requires."""
    with ledger.engine.connect() as conn:
        if ledger.dialect == "sqlite":
            conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                "PRAGMA temp_store = MEMORY")
        yield conn


def _filtered(sql: str, columns: Mapping[str, str], filters: Filters,
              wrap: bool) -> tuple[str, dict[str, Any]]:
    """SQL narrowed by the given filters; values are bound, never written into the text."""
    conditions, params = [], {}
    for name in filters.given():
        column = columns[name]
        if name == "since":
            conditions.append(f"{column} >= :since")
            params["since"] = filters.since
        else:
            conditions.append(f"{column} IN :{name}")
            params[name] = list(getattr(filters, name))
    where = "WHERE " + " AND ".join(conditions) if conditions else "WHERE 1 = 1"
    if "{where}" in sql:
        return sql.replace("{where}", where), params
    if wrap and conditions:
        return f"SELECT * FROM ({sql}) report {where}", params
    return sql, params


def _bind(sql: str, params: Mapping[str, Any]) -> Any:
    stmt = text(sql)
    lists = [bindparam(k, expanding=True) for k, v in params.items() if isinstance(v, list)]
    return stmt.bindparams(*lists) if lists else stmt


def plain(value: Any) -> Any:
    """Driver values as JSON-able Python: PostgreSQL hands back Decimal for numeric sums."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def run_sql(ledger: Ledger, query: str, limit: int) -> tuple[Rows, bool]:
    """An ad-hoc statement on a read-only ledger: up to `limit` rows, and whether there were
    more. Rows are fetched one batch at a time, never all at once."""
    with ledger.engine.connect() as conn:
        if ledger.dialect == "sqlite":
            conn.connection.dbapi_connection.set_authorizer(_reads_only)  # type: ignore[union-attr]
        result = conn.exec_driver_sql(query)
        if not result.returns_rows:
            return Rows("sql", "sql", (), ()), False
        columns = tuple(result.keys())
        fetched = result.fetchmany(limit + 1)
        result.close()
    rows = tuple(tuple(plain(v) for v in row) for row in fetched[:limit])
    return Rows("sql", "sql", columns, rows), len(fetched) > limit


# The connection is already read-only; this also refuses what read-only mode lets through,
# such as ATTACH (which creates a file) and VACUUM INTO (which writes one).
_READ_ACTIONS = frozenset({sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
                           sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_RECURSIVE,
                           sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})


def _reads_only(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def list_reports() -> list[tuple[str, str, str]]:
    """(name, what it shows, the filters it takes) for every report."""
    return [(r.name, r.title, " ".join(f"--{f}" for f in r.filters)) for r in REPORTS]


# --- rendering ------------------------------------------------------------------------------

TEXT_FORMATS: tuple[str, ...] = tuple(sorted(tabulate_formats))
FORMATS: tuple[str, ...] = ("csv", "json", *TEXT_FORMATS)


def check_format(fmt: Any) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise UsageError(f"--format must be csv, json or a tabulate format "
                         f"({', '.join(TEXT_FORMATS)}); got {fmt!r}")
    return fmt


def render(rows: Rows, fmt: str, *, title: bool = True) -> str:
    """Rows as CSV, a JSON array of objects, or a tabulate table (numbers made readable)."""
    if fmt == "json":
        return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows.records()],
                          ensure_ascii=False)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(rows.columns)
        writer.writerows([_json_value(v) for v in row] for row in rows.rows)
        return out.getvalue().rstrip("\n")
    body = tabulate([[cell(c, v) for c, v in zip(rows.columns, row)] for row in rows.rows],
                    headers=list(rows.columns), tablefmt=fmt, disable_numparse=True,
                    colalign=[_align(rows, i) for i in range(len(rows.columns))] or None)
    parts = [rows.title] if title else []
    parts.append(body if rows.rows else f"{body}\n(no rows)" if rows.columns else "(no rows)")
    if rows.note and title:
        parts.append(rows.note)
    return "\n".join(parts)


def cell(column: str, value: Any) -> str:
    """One value as people read it: money to 6 places, rates as percentages."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column.endswith("_usd"):
        return f"{value:.6f}"
    if column.endswith("_rate"):
        return f"{value * 100:.1f}%"
    if column.endswith("_pct"):
        return f"{value:.1f}%"
    if isinstance(value, float):
        return f"{value:.2f}" if column.startswith("avg_") else f"{value:g}"
    return f"{value:,}" if column not in _IDS else str(value)


_IDS = frozenset({"attempt_id", "pid", "exit_code", "run_stopped"})


def _align(rows: Rows, index: int) -> str:
    values = [r[index] for r in rows.rows if r[index] is not None]
    numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             for v in values)
    return "right" if numeric else "left"


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 12)
    return value
